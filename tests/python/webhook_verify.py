"""Verifies Runnel report webhooks as a receiver would (the code of docs/reports.md).

Reads JSON from stdin: {"secret": "...", "deliveries": [{"body": "...", "signature": "..."}]};
prints {"valid": N, "invalid": M}.
"""

import hashlib
import hmac
import json
import sys


def verify(secret: bytes, body: bytes, signature_header: str) -> bool:
    """Whether X-Runnel-Signature (sha256=HEX) is the HMAC-SHA256 of the raw body."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature_header)


def main() -> None:
    given = json.load(sys.stdin)
    secret = given["secret"].encode()
    valid = sum(
        verify(secret, d["body"].encode(), d["signature"]) for d in given["deliveries"]
    )
    print(json.dumps({"valid": valid, "invalid": len(given["deliveries"]) - valid}))


if __name__ == "__main__":
    main()
