"""Runs one SQL statement over ADBC and prints its rows and its schema metadata as JSON (the
plan-cache test runs it twice, with events appended in between).

Usage: flight_sql_twice.py URL TOKEN SQL
"""

import json
import sys

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql

from common import rows

url, token, sql = sys.argv[1], sys.argv[2], sys.argv[3]
conn = flight_sql.connect(
    url,
    db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
)
cur = conn.cursor()
cur.execute(sql)
table = cur.fetch_arrow_table()
meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
print(json.dumps({"rows": rows(table), "metadata": meta}))
conn.close()
