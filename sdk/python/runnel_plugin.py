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
_FIELD_INDEX = {name: i for i, name in enumerate(FIELDS)}
_EVENT_ID, _EVENT_TYPE, _PROPERTIES = 0, 1, 7
_HEADER = struct.Struct("<4sHHII")
_RECORD_BYTES = 88
_WORDS = _RECORD_BYTES // 4  # u32 words per record; field f's span at words 6 + 2f, 7 + 2f
_TIMES = struct.Struct("<qqI")
_SPANS_AT = 24  # bytes into a record where the fields' (offset, len) pairs start
_SPAN = struct.Struct("<II")
_ABSENT = 0xFFFFFFFF
_MAGIC = b"RNPB"
_VERSION = 1
# One encoder and one decoder for every event: `json.dumps` with arguments and `JSONEncoder.encode`
# build the C encoder at each call, `json.loads` runs two regular expressions around the parse.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
try:
    from _json import make_encoder as _make_encoder

    # markers None: no circular-reference check, as `check_circular=False` (a cycle ends in a
    # RecursionError); a markers dict kept across calls could keep stale entries after an error.
    _C_ENCODE = _make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
except ImportError:
    _C_ENCODE = None
_SCAN = json.JSONDecoder().scan_once


def _dumps(value) -> str:
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


def _loads(text: str):
    # Properties as the agent stores them start with "{" and end at the object's end; anything
    # else (spaces around it) takes json.loads, which also makes its errors.
    if text[:1] == "{":
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            value, end = None, -1
        if end == len(text):
            return value
    return json.loads(text)


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


class _Batch:
    """The bytes of one input batch, shared by its events."""

    __slots__ = ("buf", "words", "times", "heap", "records_end")

    def __init__(self, buf, records_end):
        self.buf = buf
        records = memoryview(buf)[_HEADER.size : records_end]
        self.words = records.cast("I")
        self.times = records.cast("q")
        self.heap = memoryview(buf)[records_end:]
        self.records_end = records_end

    def text(self, i, f):
        k = i * _WORDS + 6 + 2 * f
        words = self.words
        length = words[k + 1]
        if length == _ABSENT:
            return None
        off = words[k]
        return str(self.heap[off : off + length], "utf-8")


class Event:
    """One event of a batch, read lazily from the batch bytes."""

    __slots__ = ("_batch", "_i")

    def __init__(self, batch, i):
        self._batch = batch
        self._i = i

    @property
    def timestamp_ms(self) -> int:
        return self._batch.times[self._i * (_WORDS // 2)]

    @property
    def received_at_ms(self) -> int:
        return self._batch.times[self._i * (_WORDS // 2) + 1]

    @property
    def schema_version(self) -> int:
        return self._batch.words[self._i * _WORDS + 4]

    def field(self, name: str):
        """The text of envelope field ``name``, or None when absent."""
        try:
            f = _FIELD_INDEX[name]
        except KeyError:
            raise KeyError(f"{name} is not an envelope field") from None
        return self._batch.text(self._i, f)

    @property
    def event_id(self) -> str:
        return self._batch.text(self._i, _EVENT_ID) or ""

    @property
    def event_type(self) -> str:
        return self._batch.text(self._i, _EVENT_TYPE) or ""

    @property
    def properties(self):
        """``properties`` parsed (a dict), or None."""
        text = self._batch.text(self._i, _PROPERTIES)
        return None if text is None else _loads(text)

    def to_owned(self) -> "OwnedEvent":
        """A copy that can be changed and passed to ``Replace``."""
        return OwnedEvent._of(self)


class OwnedEvent:
    """An event with fields that can be set (``properties`` as a dict or JSON text).

    A copy made by ``Event.to_owned`` keeps pointing at its source's bytes for the fields that
    were not set, so passing it on copies only what changed."""

    __slots__ = ("timestamp_ms", "received_at_ms", "schema_version", "_fields", "_source", "_set")

    def __init__(self, timestamp_ms, received_at_ms, schema_version, fields):
        self.timestamp_ms = timestamp_ms
        self.received_at_ms = received_at_ms
        self.schema_version = schema_version
        self._fields = dict(fields)
        self._source = None
        self._set = None

    @classmethod
    def _of(cls, event):
        out = cls.__new__(cls)
        out.timestamp_ms = event.timestamp_ms
        out.received_at_ms = event.received_at_ms
        out.schema_version = event.schema_version
        out._fields = None
        out._source = event
        out._set = {}
        return out

    @property
    def fields(self) -> dict:
        """Every field by name (text, or None when absent)."""
        if self._fields is None:
            src = self._source
            self._fields = {name: src._batch.text(src._i, f) for name, f in _FIELD_INDEX.items()}
            self._fields.update((FIELDS[f], v) for f, v in self._set.items())
            self._source = None
        return self._fields

    def set(self, name: str, value):
        f = _FIELD_INDEX.get(name)
        if f is None:
            raise KeyError(f"{name} is not an envelope field")
        if f == _PROPERTIES and isinstance(value, dict):
            value = _dumps(value)
        if self._fields is None:
            self._set[f] = value
        else:
            self._fields[name] = value


def read_batch(buf: bytes):
    """The events of a batch buffer (checks the header and the size)."""
    if len(buf) < _HEADER.size:
        raise ValueError("batch shorter than its header")
    magic, version, _, count, heap_len = _HEADER.unpack_from(buf, 0)
    if magic != _MAGIC or version != _VERSION:
        raise ValueError("not a version 1 RNPB batch")
    records_end = _HEADER.size + count * _RECORD_BYTES
    if len(buf) != records_end + heap_len:
        raise ValueError(f"batch is {len(buf)} bytes, its header implies {records_end + heap_len}")
    batch = _Batch(buf, records_end)
    return [Event(batch, i) for i in range(count)]


def _put(records, heap, at, f, value):
    """Writes field ``f`` of the record at ``at``: its text added to ``heap``, or absent."""
    span = at + _SPANS_AT + 8 * f
    if value is None:
        _SPAN.pack_into(records, span, 0, _ABSENT)
    else:
        data = value.encode("utf-8")
        _SPAN.pack_into(records, span, len(heap), len(data))
        heap += data


def write_batch(events) -> bytes:
    """A batch buffer holding ``events`` (``OwnedEvent``s).

    Copies made by ``Event.to_owned`` share their input batch: the output's heap starts with the
    input's heap (that of the first copy's batch), their unchanged fields keep pointing into it
    and only the fields set are added (the encoding lets fields point anywhere in the heap).
    Any other event is written field by field."""
    shared = next((ev._source._batch for ev in events if ev._fields is None), None)
    records = bytearray(_RECORD_BYTES * len(events))
    heap = bytearray() if shared is None else bytearray(shared.heap)
    for j, ev in enumerate(events):
        at = j * _RECORD_BYTES
        if ev._fields is None and ev._source._batch is shared:
            k = _HEADER.size + ev._source._i * _RECORD_BYTES
            records[at : at + _RECORD_BYTES] = shared.buf[k : k + _RECORD_BYTES]
            for f, value in ev._set.items():
                _put(records, heap, at, f, value)
        else:
            fields = ev.fields
            for f, name in enumerate(FIELDS):
                _put(records, heap, at, f, fields.get(name))
        _TIMES.pack_into(records, at, ev.timestamp_ms, ev.received_at_ms, ev.schema_version)
    return _HEADER.pack(_MAGIC, _VERSION, 0, len(events), len(heap)) + records + heap


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

    keep = types.Outcome_Keep()

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
            kept = 0
            for ev in events:
                d = decide(ev)
                if d is None or isinstance(d, Keep):
                    outcomes.append(keep)
                    kept += 1
                elif isinstance(d, Replace):
                    outcomes.append(types.Outcome_Replace(len(replacements)))
                    replacements.append(d.event)
                elif isinstance(d, Drop):
                    outcomes.append(types.Outcome_Drop(d.reason))
                else:
                    raise Err(f"decide returned {d!r}, not Keep, Replace or Drop")
            if kept == len(outcomes):
                # The contract's short form of "keep every event".
                return types.EnrichResult([], b"")
            return types.EnrichResult(outcomes, write_batch(replacements) if replacements else b"")

    return WitWorld
