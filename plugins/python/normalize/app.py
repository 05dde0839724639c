"""normalize: a Runnel enricher written in Python.

- ``platform`` is lower-cased and trimmed (``" iOS "`` becomes ``"ios"``), so aggregates group
  one platform under one name;
- events whose ``event_type`` starts with the parameter ``drop_prefix`` (default ``"test."``)
  are dropped with a reason.
"""

import runnel_plugin as rp

DEFAULT_DROP_PREFIX = "test."


def check(params):
    prefix = params.get("drop_prefix", DEFAULT_DROP_PREFIX)
    if len(prefix) > 64:
        raise ValueError("drop_prefix: longer than 64 characters")


def decide(event):
    prefix = rp.params().get("drop_prefix", DEFAULT_DROP_PREFIX)
    if prefix and event.event_type.startswith(prefix):
        return rp.Drop(f"event_type {event.event_type} starts with {prefix} (drop_prefix)")
    platform = event.field("platform")
    if platform is not None and platform != platform.strip().lower():
        out = event.to_owned()
        out.set("platform", platform.strip().lower())
        return rp.Replace(out)
    return rp.Keep()


WitWorld = rp.enricher(decide, init=check)
