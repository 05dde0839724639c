"""Everything one tenant's token can see over Arrow Flight (pyarrow) and Flight SQL (ADBC),
including SQL that tries to reach around the tenant's scope, for the tenants test to check.

Usage: tenant_check.py GRPC_URL TOKEN OWN_AGGREGATE FOREIGN_AGGREGATE[,…] [FOREIGN_AGENT…]
Prints one JSON object.
"""

import json
import sys

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow.flight as fl

from common import error_of, rows

url, token, own, foreign = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
out = {"flight": {}, "sql": {}, "sql_errors": {}}

# Plain Flight with pyarrow.
client = fl.FlightClient(url)
auth = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
out["flight"]["flights"] = sorted(
    json.loads(f.descriptor.command.decode())["table"] for f in client.list_flights(options=auth)
)


def flight_rows(table):
    info = client.get_flight_info(fl.FlightDescriptor.for_path(table), auth)
    return rows(client.do_get(info.endpoints[0].ticket, auth).read_all())


out["flight"]["events"] = [r["event_id"] for r in flight_rows("events")]
out["flight"]["events_agents"] = sorted({r["agent_id"] for r in flight_rows("events")})
out["flight"]["own"] = flight_rows(own)
out["flight"]["dead_letters"] = len(flight_rows("dead_letters"))
out["flight"]["foreign_errors"] = {
    f: error_of(lambda f=f: flight_rows(f)) for f in foreign
}
# A ticket for another tenant's aggregate, made by hand.
out["flight"]["foreign_ticket_errors"] = {
    f: error_of(
        lambda f=f: client.do_get(fl.Ticket(json.dumps({"table": f}).encode()), auth).read_all()
    )
    for f in foreign
}

# Flight SQL with ADBC.
conn = flight_sql.connect(
    url,
    db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
)
cur = conn.cursor()


def sql(name, query):
    try:
        cur.execute(query)
        out["sql"][name] = rows(cur.fetch_arrow_table())
    except Exception as e:  # ADBC's error types
        out["sql_errors"][name] = f"{type(e).__name__}: {e}"


others = ", ".join(f"'{a}'" for a in sys.argv[5:]) if len(sys.argv) > 5 else "''"
sql("events", "SELECT event_id, agent_id FROM events")
sql("count", "SELECT count(*) AS n FROM events")
sql("tenant_ids", "SELECT DISTINCT tenant_id FROM events")
sql(
    "union",
    "SELECT event_id, agent_id FROM events UNION ALL "
    "SELECT event_id, agent_id FROM events WHERE agent_id <> 'nobody'",
)
sql(
    "subquery",
    "SELECT event_id, agent_id FROM events WHERE agent_id IN "
    "(SELECT agent_id FROM events WHERE event_type LIKE '%') OR event_id IS NULL",
)
sql("by_agent", "SELECT agent_id, count(*) AS n FROM events GROUP BY agent_id")
sql("foreign_agents", f"SELECT count(*) AS n FROM events WHERE agent_id IN ({others})")
sql(
    "tables",
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
)
sql("columns", "SELECT DISTINCT table_name FROM information_schema.columns")
sql("own", f"SELECT sum(events) AS n FROM {own}")
sql("dead_letters", "SELECT entry FROM dead_letters")
sql("late_events", "SELECT entry FROM late_events")
for f in foreign:
    sql(f"foreign:{f}", f"SELECT * FROM {f}")
    sql(f"foreign_union:{f}", f"SELECT window_start FROM {own} UNION ALL SELECT window_start FROM {f}")
    sql(f"foreign_qualified:{f}", f"SELECT * FROM runnel.public.{f}")
objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
out["objects"] = sorted(
    t["table_name"]
    for c in objects
    for s in c["catalog_db_schemas"] or []
    for t in s["db_schema_tables"] or []
)
conn.close()
print(json.dumps(out))
