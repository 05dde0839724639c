"""runnel_plugin: write a Runnel enricher in Python.

A plugin is one function, ``decide(event) -> Keep | Replace | Drop``, built into a WebAssembly
component with componentize-py against ``wit/plugin.wit`` (world ``enricher``)::

    import runnel_plugin as rp

    def decide(event: rp.Event):
        if event.event_type.startswith("test."):
            return rp.Drop("test events stay out")
        return rp.Keep()

    WitWorld = rp.enricher(decide)

The host calls the plugin once per batch; the batch crosses as bytes in the Runnel batch encoding
(docs/plugin-abi.md), which this module reads and writes. ``properties`` stays JSON text until
``event.properties`` is read.
"""

import json
import struct

FIELDS = (
    "event_id",
    "event_type",
    "user_id",
    "session_id",
    "device_id",
    "platform",
    "app_version",
    "properties",
)
_HEADER = struct.Struct("<4sHHII")
_RECORD = struct.Struct("<qqII16I")
_ABSENT = 0xFFFFFFFF
_MAGIC = b"RNPB"
_VERSION = 1


class Keep:
    """Pass the event on unchanged."""


class Drop:
    """Drop the event; the host counts it with the reason."""

    def __init__(self, reason: str):
        self.reason = reason


class Replace:
    """Pass this event on instead (an ``OwnedEvent``)."""

    def __init__(self, event: "OwnedEvent"):
        self.event = event


class Event:
    """One event of a batch, read lazily from the batch bytes."""

    __slots__ = ("timestamp_ms", "received_at_ms", "schema_version", "_spans", "_heap")

    def __init__(self, timestamp_ms, received_at_ms, schema_version, spans, heap):
        self.timestamp_ms = timestamp_ms
        self.received_at_ms = received_at_ms
        self.schema_version = schema_version
        self._spans = spans
        self._heap = heap

    def field(self, name: str):
        """The text of envelope field ``name``, or None when absent."""
        i = FIELDS.index(name)
        off, length = self._spans[2 * i], self._spans[2 * i + 1]
        if length == _ABSENT:
            return None
        return bytes(self._heap[off : off + length]).decode("utf-8")

    @property
    def event_id(self) -> str:
        return self.field("event_id") or ""

    @property
    def event_type(self) -> str:
        return self.field("event_type") or ""

    @property
    def properties(self):
        """``properties`` parsed (a dict), or None."""
        text = self.field("properties")
        return None if text is None else json.loads(text)

    def to_owned(self) -> "OwnedEvent":
        """A copy that can be changed and passed to ``Replace``."""
        return OwnedEvent(
            self.timestamp_ms,
            self.received_at_ms,
            self.schema_version,
            {name: self.field(name) for name in FIELDS},
        )


class OwnedEvent:
    """An event with fields that can be set (``properties`` as a dict or JSON text)."""

    def __init__(self, timestamp_ms, received_at_ms, schema_version, fields):
        self.timestamp_ms = timestamp_ms
        self.received_at_ms = received_at_ms
        self.schema_version = schema_version
        self.fields = fields

    def set(self, name: str, value):
        if name not in FIELDS:
            raise KeyError(f"{name} is not an envelope field")
        if name == "properties" and isinstance(value, dict):
            value = json.dumps(value, separators=(",", ":"))
        self.fields[name] = value


def read_batch(buf: bytes):
    """The events of a batch buffer (checks the header and the size)."""
    if len(buf) < _HEADER.size:
        raise ValueError("batch shorter than its header")
    magic, version, _, count, heap_len = _HEADER.unpack_from(buf, 0)
    if magic != _MAGIC or version != _VERSION:
        raise ValueError("not a version 1 RNPB batch")
    records_end = _HEADER.size + count * _RECORD.size
    if len(buf) != records_end + heap_len:
        raise ValueError(f"batch is {len(buf)} bytes, its header implies {records_end + heap_len}")
    heap = memoryview(buf)[records_end:]
    events = []
    for i in range(count):
        rec = _RECORD.unpack_from(buf, _HEADER.size + i * _RECORD.size)
        events.append(Event(rec[0], rec[1], rec[2], rec[4:], heap))
    return events


def write_batch(events) -> bytes:
    """A batch buffer holding ``events`` (``OwnedEvent``s)."""
    records = bytearray()
    heap = bytearray()
    for ev in events:
        spans = []
        for name in FIELDS:
            value = ev.fields.get(name)
            if value is None:
                spans += [0, _ABSENT]
            else:
                data = value.encode("utf-8")
                spans += [len(heap), len(data)]
                heap += data
        records += _RECORD.pack(ev.timestamp_ms, ev.received_at_ms, ev.schema_version, 0, *spans)
    return _HEADER.pack(_MAGIC, _VERSION, 0, len(events), len(heap)) + bytes(records) + bytes(heap)


class Params(dict):
    """The plugin's parameters (name to string)."""


_params = Params()


def params() -> Params:
    """The parameters this instance was started with."""
    return _params


def log(message: str):
    """Writes a line to the host's log at level info."""
    from wit_world.imports import host

    host.log(host.Level.INFO, message)


def counter_add(name: str, delta: int):
    """Adds ``delta`` to this plugin's counter ``name`` on the host."""
    from wit_world.imports import host

    host.counter_add(name, delta)


def enricher(decide, init=None):
    """Makes ``decide(event)`` the component's enricher; ``init(params)`` may raise
    ``ValueError`` to refuse the parameters. Assign the result to ``WitWorld``."""
    import wit_world
    from wit_world.imports import types
    from componentize_py_types import Err

    class WitWorld(wit_world.WitWorld):
        def init(self, params):
            _params.clear()
            _params.update({p.name: p.value for p in params})
            if init is not None:
                try:
                    init(_params)
                except ValueError as e:
                    raise Err(str(e))

        def enrich(self, batch):
            try:
                events = read_batch(batch)
            except ValueError as e:
                raise Err(str(e))
            outcomes = []
            replacements = []
            for ev in events:
                d = decide(ev)
                if isinstance(d, Keep) or d is None:
                    outcomes.append(types.Outcome_Keep())
                elif isinstance(d, Drop):
                    outcomes.append(types.Outcome_Drop(d.reason))
                elif isinstance(d, Replace):
                    outcomes.append(types.Outcome_Replace(len(replacements)))
                    replacements.append(d.event)
                else:
                    raise Err(f"decide returned {d!r}, not Keep, Replace or Drop")
            if not replacements and all(isinstance(o, types.Outcome_Keep) for o in outcomes):
                # The contract's short form of "keep every event".
                return types.EnrichResult([], b"")
            return types.EnrichResult(outcomes, write_batch(replacements) if replacements else b"")

    return WitWorld
