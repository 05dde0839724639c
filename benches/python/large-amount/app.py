"""large-amount: the Python enricher of the broker_pipeline bench.

Drops events whose ``event_type`` starts with ``debug.``; marks events whose ``amount`` is over
100 with ``"large": true`` in their properties. Written as a plugin author would, with the SDK's
documented calls.
"""

import runnel_plugin as rp


def decide(event):
    if event.event_type.startswith("debug."):
        return rp.Drop("debug event")
    props = event.properties
    if props is not None and props.get("amount", 0) > 100:
        props["large"] = True
        out = event.to_owned()
        out.set("properties", props)
        return rp.Replace(out)
    return rp.Keep()


WitWorld = rp.enricher(decide)
