"""Reads a history table (`events`, `enriched_events`) over a Runnel broker's plain Arrow
Flight with pyarrow, as an analyst would.

Usage: flight_history_check.py GRPC_URL TOKEN TABLE FROM TO
Prints one JSON object: for the path descriptor (`all`) and for a command with the time range
[FROM, TO) in RFC 3339 (`range`), the rows, the distinct offsets, the lowest and highest offset
and whether the offsets come in order; or {"error": …} when the broker refused.
"""

import json
import sys

import pyarrow.flight as fl

url, token, table, start, end = sys.argv[1:6]
client = fl.FlightClient(url)
auth = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


def read(descriptor):
    info = client.get_flight_info(descriptor, auth)
    got = client.do_get(info.endpoints[0].ticket, auth).read_all()
    offsets = got.column("offset").to_pylist()
    return {
        "rows": got.num_rows,
        "distinct": len(set(offsets)),
        "min": min(offsets, default=None),
        "max": max(offsets, default=None),
        "ordered": offsets == sorted(offsets),
        "columns": got.schema.names,
    }


try:
    out = {
        "all": read(fl.FlightDescriptor.for_path(table)),
        "range": read(
            fl.FlightDescriptor.for_command(
                json.dumps({"table": table, "from": start, "to": end})
            )
        ),
    }
except fl.FlightError as e:
    out = {"error": str(e)}
print(json.dumps(out))
