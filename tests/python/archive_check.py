"""Reads the archive's `events` table as its users do and prints what each reader counts.

    archive_check.py TABLE_URI [STORAGE_OPTIONS_JSON]

TABLE_URI is the table's folder (a local path or s3://bucket/prefix/events). Prints JSON:
{"deltalake": {...}, "duckdb": {...}, "parquet": {...}, "files": {...}}, each reader's total
rows, distinct offsets, least and greatest offset and rows per "event_type|date"; "parquet" is
DuckDB's plain read_parquet over the Hive folders (no Delta log), which sees every data file
stored, committed or not; "files" compares the files the Delta log lists with those stored.
"""

import json
import sys

import os

import deltalake
import duckdb
import duckdb_extension_delta
import duckdb_extension_httpfs


def load(con, module, name):
    """Loads a DuckDB extension from its PyPI package (DuckDB's signed build)."""
    path = os.path.join(os.path.dirname(module.__file__), f"extensions/v{duckdb.__version__}/{name}.duckdb_extension")
    con.execute(f"LOAD '{path}'")


def summary(rows):
    """rows: (event_type, date, count, distinct offsets, min offset, max offset) per partition."""
    by = {}
    total = distinct = 0
    lo, hi = None, None
    for t, d, n, dn, mn, mx in rows:
        by[f"{t}|{d}"] = n
        total += n
        distinct += dn
        lo = mn if lo is None else min(lo, mn)
        hi = mx if hi is None else max(hi, mx)
    return {"total": total, "distinct_offsets": distinct, "min_offset": lo, "max_offset": hi, "by_partition": by}


GROUP = """
    SELECT event_type, CAST(date AS VARCHAR), count(*), count(DISTINCT "offset"), min("offset"), max("offset")
    FROM {src} GROUP BY ALL
"""


def main():
    uri = sys.argv[1]
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    out = {}

    dt = deltalake.DeltaTable(uri, storage_options=options)
    table = dt.to_pyarrow_table()
    con = duckdb.connect()
    con.register("dl", table)
    out["deltalake"] = summary(con.execute(GROUP.format(src="dl")).fetchall())
    out["deltalake"]["version"] = dt.version()
    out["deltalake"]["columns"] = table.column_names

    load(con, duckdb_extension_delta, "delta")
    if uri.startswith("s3://"):
        load(con, duckdb_extension_httpfs, "httpfs")
        endpoint = options["AWS_ENDPOINT_URL"].removeprefix("http://")
        con.execute(
            f"""CREATE SECRET s3 (TYPE s3, KEY_ID '{options["AWS_ACCESS_KEY_ID"]}',
                SECRET '{options["AWS_SECRET_ACCESS_KEY"]}', REGION '{options["AWS_REGION"]}',
                ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)"""
        )
    src = uri.rstrip("/")
    out["duckdb"] = summary(con.execute(GROUP.format(src=f"delta_scan('{src}')")).fetchall())
    parquet = f"read_parquet('{src}/*/*/*.parquet', hive_partitioning = true)"
    out["parquet"] = summary(con.execute(GROUP.format(src=parquet)).fetchall())

    committed = sorted(dt.file_uris())
    stored = sorted(r[0] for r in con.execute(f"SELECT file FROM glob('{src}/*/*/*.parquet')").fetchall())
    norm = lambda u: u.removeprefix("file://")
    out["files"] = {
        "committed": len(committed),
        "stored": len(stored),
        "same": [norm(u) for u in committed] == [norm(u) for u in stored],
    }
    print(json.dumps(out))


main()
