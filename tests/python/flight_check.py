"""Drives a Runnel broker's Arrow Flight service with pyarrow, as an analyst would.

Usage: flight_check.py GRPC_URL TOKEN AGGREGATE
Prints one JSON object: what each call returned, for the Rust test to check.
"""

import json
import sys

import pyarrow.flight as fl

from common import error_of, rows

url, token, aggregate = sys.argv[1], sys.argv[2], sys.argv[3]
client = fl.FlightClient(url)
auth = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
out = {}

out["flights"] = sorted(
    f.descriptor.command.decode() for f in client.list_flights(options=auth)
)
info = client.get_flight_info(fl.FlightDescriptor.for_path(aggregate), auth)
out["info_schema"] = info.schema.names
out["watermark"] = (info.schema.metadata or {}).get(b"runnel.watermark", b"").decode()
out["window"] = (info.schema.metadata or {}).get(b"runnel.window", b"").decode()
schema = client.get_schema(fl.FlightDescriptor.for_path(aggregate), auth).schema
out["schema"] = [[f.name, str(f.type)] for f in schema]
table = client.do_get(info.endpoints[0].ticket, auth).read_all()
out["rows"] = rows(table)

query = {"table": aggregate, "where": {"platform": "ios"}, "limit": 5}
info = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(query)), auth)
out["ios_rows"] = rows(client.do_get(info.endpoints[0].ticket, auth).read_all())

info = client.get_flight_info(fl.FlightDescriptor.for_path("events"), auth)
events = client.do_get(info.endpoints[0].ticket, auth).read_all()
out["events"] = events.num_rows
out["events_schema"] = events.schema.names

info = client.get_flight_info(fl.FlightDescriptor.for_path("late_events"), auth)
out["late_events"] = client.do_get(info.endpoints[0].ticket, auth).read_all().num_rows

# Handshake with basic auth gives the bearer token.
basic = client.authenticate_basic_token(b"runnel", token.encode())
out["handshake"] = [basic[0].decode(), basic[1].decode()]

# Refusals.
wrong = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer wrong-token-0123456789")])
out["no_token"] = error_of(lambda: list(client.list_flights()))
out["wrong_token"] = error_of(lambda: list(client.list_flights(options=wrong)))
out["wrong_token_get"] = error_of(
    lambda: client.get_flight_info(fl.FlightDescriptor.for_path(aggregate), wrong)
)
out["wrong_password"] = error_of(
    lambda: client.authenticate_basic_token(b"runnel", b"not-the-token-0123456789")
)
out["unknown_table"] = error_of(
    lambda: client.get_flight_info(fl.FlightDescriptor.for_path("no_such_table"), auth)
)
bad = {"table": aggregate, "where": {"no_such_column": "x"}}
out["unknown_column"] = error_of(
    lambda: client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(bad)), auth)
)
print(json.dumps(out))
