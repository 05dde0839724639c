"""Reads an aggregate's archive table `agg_<name>` as its users do and prints what each reader sees.

    agg_check.py TABLE_URI

Prints JSON: {"deltalake": {KEY: events}, "duckdb": {KEY: events}, "columns": [...],
"version": N, "overwrites": N, "rows": {"deltalake": N, "duckdb": N}}, where KEY is "window_start_ms|event_type|platform" (then
"|app_version" where the table has that column), "deltalake" is the `deltalake` package's read,
"duckdb" DuckDB's `delta_scan`, and "overwrites" counts the table's commits that replaced rows.
"""

import json
import os
import sys

import deltalake
import duckdb
import duckdb_extension_delta


def load(con, module, name):
    """Loads a DuckDB extension from its PyPI package (DuckDB's signed build)."""
    path = os.path.join(os.path.dirname(module.__file__), f"extensions/v{duckdb.__version__}/{name}.duckdb_extension")
    con.execute(f"LOAD '{path}'")


def keyed(rows, columns):
    out = {}
    versioned = "app_version" in columns
    for r in rows:
        r = dict(zip(columns, r))
        start = r["window_start"]
        start = start if isinstance(start, int) else int(start.timestamp() * 1000)
        key = f"{start}|{r['event_type']}|{r['platform'] or ''}"
        if versioned and r["app_version"] is not None:
            key += f"|{r['app_version']}"
        out[key] = out.get(key, 0) + int(r["events"])
    return out


def main():
    uri = sys.argv[1]
    dt = deltalake.DeltaTable(uri)
    table = dt.to_pyarrow_table()
    columns = table.column_names
    out = {"columns": columns, "version": dt.version()}
    out["overwrites"] = sum(
        1 for h in dt.history() if h.get("operationParameters", {}).get("mode") == "Overwrite"
    )
    out["deltalake"] = keyed(zip(*[table.column(c).to_pylist() for c in columns]), columns)
    out["rows"] = {"deltalake": table.num_rows}
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    load(con, duckdb_extension_delta, "delta")
    cur = con.execute(
        f"SELECT * EXCLUDE (window_end) REPLACE (epoch_ms(window_start) AS window_start) FROM delta_scan('{uri}')"
    )
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    out["duckdb"] = keyed(rows, names)
    out["rows"]["duckdb"] = len(rows)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
