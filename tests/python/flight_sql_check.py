"""Drives a Runnel broker's Flight SQL service with the ADBC Flight SQL driver, as an analyst
would from Python.

Usage: flight_sql_check.py GRPC_URL TOKEN AGGREGATE COPY_TARGET
(COPY_TARGET: a path a refused COPY … TO would have written)
Prints one JSON object: what each call returned, for the Rust test to check.
"""

import json
import sys

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql

from common import error_of, rows

url, token, aggregate, copy_target = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
header = adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value
out = {}


def query(conn, sql, parameters=None):
    with conn.cursor() as cur:
        cur.execute(sql, parameters)
        return cur.fetch_arrow_table()


order = "window_start, event_type, platform"
with flight_sql.connect(url, db_kwargs={header: f"Bearer {token}"}) as conn:
    # A statement.
    table = query(conn, f"SELECT * FROM {aggregate} ORDER BY {order}")
    out["schema"] = [[f.name, str(f.type)] for f in table.schema]
    out["rows"] = rows(table)
    # A prepared statement with a parameter, as JDBC sends every query.
    out["ios_rows"] = rows(
        query(conn, f"SELECT * FROM {aggregate} WHERE platform = $1 ORDER BY {order}", ("ios",))
    )
    out["question_mark_rows"] = rows(
        query(conn, f"SELECT * FROM {aggregate} WHERE platform = ? ORDER BY {order}", ("ios",))
    )
    # SQL over the aggregate and over the recent log.
    out["per_platform"] = rows(
        query(
            conn,
            f"SELECT platform, SUM(events) AS events FROM {aggregate} "
            "GROUP BY platform ORDER BY platform",
        )
    )
    out["events"] = query(conn, "SELECT count(*) AS n FROM events").to_pylist()[0]["n"]
    out["late_events"] = query(conn, "SELECT count(*) AS n FROM late_events").to_pylist()[0]["n"]

    # Catalog metadata, as DBeaver reads it.
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    out["objects"] = {
        c["catalog_name"]: {
            s["db_schema_name"]: {
                t["table_name"]: [col["column_name"] for col in (t["table_columns"] or [])]
                for t in s["db_schema_tables"]
            }
            for s in c["catalog_db_schemas"]
        }
        for c in objects
    }
    out["table_types"] = conn.adbc_get_table_types()
    out["table_schema"] = conn.adbc_get_table_schema(aggregate).names
    info = conn.adbc_get_info()
    out["info"] = {k: str(v) for k, v in info.items()}

    # Errors name what is wrong.
    out["unknown_table"] = error_of(lambda: query(conn, "SELECT * FROM no_such_table"))
    out["unknown_column"] = error_of(
        lambda: query(conn, f"SELECT no_such_column FROM {aggregate}")
    )
    # Read-only: COPY would write a file on the broker's machine, CREATE EXTERNAL TABLE read one.
    out["copy"] = error_of(
        lambda: query(conn, f"COPY (SELECT 1) TO '{copy_target}' STORED AS CSV")
    )
    out["create"] = error_of(
        lambda: query(conn, "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'")
    )
    out["unknown_column_prepared"] = error_of(
        lambda: query(conn, f"SELECT * FROM {aggregate} WHERE no_such_column = $1", ("x",))
    )

# Basic auth: the driver's Handshake with user runnel and a token as password.
with flight_sql.connect(url, db_kwargs={"username": "runnel", "password": token}) as conn:
    out["basic_auth_rows"] = len(query(conn, f"SELECT * FROM {aggregate}"))


def with_header(value):
    kwargs = {} if value is None else {header: value}
    with flight_sql.connect(url, db_kwargs=kwargs) as conn:
        query(conn, "SELECT 1")


out["no_token"] = error_of(lambda: with_header(None))
out["wrong_token"] = error_of(lambda: with_header("Bearer wrong-token-0123456789"))
out["wrong_password"] = error_of(
    lambda: flight_sql.connect(
        url, db_kwargs={"username": "runnel", "password": "not-the-token-0123456789"}
    ).cursor().execute("SELECT 1")
)
print(json.dumps(out, default=str))
