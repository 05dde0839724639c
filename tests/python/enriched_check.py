"""Reads the archive's `enriched_events` table as its users do and prints what it holds.

    enriched_check.py TABLE_URI

Prints JSON: {"deltalake": {...}, "duckdb": {...}, "chains": [...]}. Each reader gives its rows,
distinct offsets, least and greatest offset, the rows whose properties still hold a plain
email ("@" in properties.email), those holding a hashed one ("sha256:"), and the rows per
event_type. "chains" lists, per committed data file, its least and greatest offset, its
greatest event time (ms) and the chain its key-value metadata `runnel.enrichers` names (read
with pyarrow.parquet).
"""

import json
import os
import sys

import deltalake
import duckdb
import duckdb_extension_delta
import pyarrow.parquet as pq

SUMMARY = """
    SELECT count(*), count(DISTINCT "offset"), min("offset"), max("offset"),
           count(*) FILTER (WHERE json_extract_string(properties, '$.email') LIKE '%@%'),
           count(*) FILTER (WHERE json_extract_string(properties, '$.email') LIKE 'sha256:%')
    FROM {src}
"""

BY_TYPE = "SELECT event_type, count(*) FROM {src} GROUP BY ALL"


def summary(con, src):
    n, d, lo, hi, plain, hashed = con.execute(SUMMARY.format(src=src)).fetchone()
    by_type = dict(con.execute(BY_TYPE.format(src=src)).fetchall())
    return {
        "total": n,
        "distinct_offsets": d,
        "min_offset": lo,
        "max_offset": hi,
        "plain_emails": plain,
        "hashed_emails": hashed,
        "by_type": by_type,
    }


def main():
    uri = sys.argv[1]
    out = {}
    dt = deltalake.DeltaTable(uri)
    con = duckdb.connect()
    con.register("dl", dt.to_pyarrow_table())
    out["deltalake"] = summary(con, "dl")
    path = os.path.join(
        os.path.dirname(duckdb_extension_delta.__file__),
        f"extensions/v{duckdb.__version__}/delta.duckdb_extension",
    )
    con.execute(f"LOAD '{path}'")
    out["duckdb"] = summary(con, f"delta_scan('{uri.rstrip('/')}')")
    chains = []
    for f in dt.file_uris():
        local = f.removeprefix("file://")
        meta = pq.read_metadata(local).metadata or {}
        cols = pq.read_table(local, columns=["offset", "timestamp"])
        offsets = cols.column("offset").to_pylist()
        times = cols.column("timestamp").cast("int64").to_pylist()
        chains.append(
            {
                "min_offset": min(offsets),
                "max_offset": max(offsets),
                "max_timestamp_ms": max(times) // 1000,
                "chain": json.loads(meta.get(b"runnel.enrichers", b"null")),
            }
        )
    out["chains"] = chains
    print(json.dumps(out))


if __name__ == "__main__":
    main()
