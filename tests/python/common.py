"""What the Flight test scripts share."""


def rows(table):
    """Rows of an Arrow table as JSON-ready dicts (timestamps as epoch milliseconds)."""
    result = []
    for row in table.to_pylist():
        for k, v in row.items():
            if hasattr(v, "timestamp"):
                row[k] = round(v.timestamp() * 1000)
        result.append(row)
    return result


def error_of(call):
    """The error `call()` raises, as {"type", "message"}; None if it raises none."""
    try:
        call()
    except Exception as e:  # the clients' error types differ: FlightError, ADBC's errors, …
        return {"type": type(e).__name__, "message": str(e)}
    return None
