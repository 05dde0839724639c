"""Drives a Runnel broker's Flight service over TLS with pyarrow.

Usage: flight_tls_check.py HOST:PORT TOKEN CA_PEM
Prints one JSON object: the tables listed over TLS, and what a plain-gRPC client got.
"""

import json
import sys

import pyarrow.flight as fl

addr, token, ca = sys.argv[1], sys.argv[2], sys.argv[3]
auth = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
out = {}
with open(ca, "rb") as f:
    client = fl.FlightClient(f"grpc+tls://{addr}", tls_root_certs=f.read())
out["tables"] = sorted(
    json.loads(f.descriptor.command)["table"] for f in client.list_flights(options=auth)
)
try:
    plain = fl.FlightClient(f"grpc://{addr}")
    list(plain.list_flights(options=auth))
    out["plain"] = None
except Exception as e:  # the TLS server does not speak plain HTTP/2
    out["plain"] = type(e).__name__
print(json.dumps(out))
