"""Tests of the Python SDK's batch reading and writing (`python3 -m unittest` in this folder;
`test.sh` runs them). The host's own checks of what a Python plugin returns are in
`tests/tests/plugin_cli.rs`."""

import struct
import unittest

import runnel_plugin as rp


def owned(n, **fields):
    base = {
        "event_id": f"ev-{n}",
        "event_type": "checkout.completed" if n % 2 else "page.view",
        "user_id": f"user-{n}",
        "session_id": None,
        "device_id": None,
        "platform": "ios",
        "app_version": "4.2.0",
        "properties": '{"amount":%d.5,"city":"Nairobi"}' % n,
    }
    base.update(fields)
    return rp.OwnedEvent(1_763_726_400_000 + n, 1_763_726_400_001 + n, 1, base)


def as_dicts(events):
    return [
        (e.timestamp_ms, e.received_at_ms, e.schema_version, {f: e.field(f) for f in rp.FIELDS})
        for e in events
    ]


class Batches(unittest.TestCase):
    def test_written_events_read_back_the_same(self):
        src = [owned(n) for n in range(5)] + [owned(5, user_id="ü-\u20ac", properties=None)]
        got = as_dicts(rp.read_batch(rp.write_batch(src)))
        want = [(e.timestamp_ms, e.received_at_ms, e.schema_version, e.fields) for e in src]
        self.assertEqual(got, want)
        self.assertIsNone(rp.read_batch(rp.write_batch(src))[5].properties)

    def test_copies_point_into_their_source_and_add_only_what_was_set(self):
        buf = rp.write_batch([owned(n) for n in range(4)])
        events = rp.read_batch(buf)
        copies = []
        for ev in events[1:3]:
            out = ev.to_owned()
            props = ev.properties
            props["large"] = True
            out.set("properties", props)
            out.set("platform", None)
            out.timestamp_ms += 7
            copies.append(out)
        written = rp.write_batch(copies)
        # The input's heap is the start of the output's, unchanged.
        _, _, _, count, heap_len = struct.unpack_from("<4sHHII", buf, 0)
        in_heap = buf[16 + 88 * count :]
        out_heap = written[16 + 88 * 2 :]
        self.assertTrue(out_heap.startswith(in_heap))
        self.assertEqual(len(out_heap) - len(in_heap), 2 * len('{"amount":1.5,"city":"Nairobi","large":true}'))
        back = rp.read_batch(written)
        for copy, ev, src in zip(back, events[1:3], [1, 2]):
            self.assertEqual(copy.timestamp_ms, ev.timestamp_ms + 7)
            self.assertEqual(copy.received_at_ms, ev.received_at_ms)
            self.assertEqual(copy.event_id, f"ev-{src}")
            self.assertEqual(copy.field("user_id"), f"user-{src}")
            self.assertIsNone(copy.field("platform"))
            self.assertEqual(copy.properties, {"amount": src + 0.5, "city": "Nairobi", "large": True})

    def test_copies_of_two_batches_and_made_events_share_one_output(self):
        a = rp.read_batch(rp.write_batch([owned(1), owned(2)]))
        b = rp.read_batch(rp.write_batch([owned(3)]))
        x, y = a[1].to_owned(), b[0].to_owned()
        x.set("app_version", "5.0")
        y.set("event_type", "refund.issued")
        made = owned(9, device_id="d-9")
        got = as_dicts(rp.read_batch(rp.write_batch([x, y, made])))
        self.assertEqual(got[0][3], dict(owned(2).fields, app_version="5.0"))
        self.assertEqual(got[1][3], dict(owned(3).fields, event_type="refund.issued"))
        self.assertEqual(got[2][3], made.fields)

    def test_a_copy_after_an_event_written_field_by_field_reads_back(self):
        events = rp.read_batch(rp.write_batch([owned(n) for n in range(3)]))
        made = owned(7, user_id="someone-else")
        copy = events[2].to_owned()
        copy.set("platform", "android")
        read_first = events[1].to_owned()
        read_first.fields  # now written field by field
        got = as_dicts(rp.read_batch(rp.write_batch([made, read_first, copy])))
        self.assertEqual(got[0][3], made.fields)
        self.assertEqual(got[1][3], owned(1).fields)
        self.assertEqual(got[2][3], dict(owned(2).fields, platform="android"))

    def test_properties_are_written_as_json_dumps_writes_them(self):
        value = {"a": [1, 2.5, None, True, "é\"\n"], "b": {"c": -1e300}, "d": ""}
        want = __import__("json").dumps(value, separators=(",", ":"))
        self.assertEqual(rp._dumps(value), want)
        c_encode, rp._C_ENCODE = rp._C_ENCODE, None
        try:
            self.assertEqual(rp._dumps(value), want)
        finally:
            rp._C_ENCODE = c_encode
        with self.assertRaises(TypeError):
            rp._dumps({"a": object()})
        self.assertEqual(rp._dumps(value), want)

    def test_fields_of_a_copy_include_what_was_set_and_stay_settable(self):
        ev = rp.read_batch(rp.write_batch([owned(4)]))[0]
        out = ev.to_owned()
        out.set("properties", {"b": [1, None, "é"]})
        self.assertEqual(out.fields["properties"], '{"b":[1,null,"\\u00e9"]}')
        self.assertEqual(out.fields["event_id"], "ev-4")
        out.set("user_id", "someone")
        back = rp.read_batch(rp.write_batch([out]))[0]
        self.assertEqual(back.field("user_id"), "someone")
        self.assertEqual(back.properties, {"b": [1, None, "é"]})

    def test_properties_parse_as_json_loads_does(self):
        for text in ['{"a":1}', ' {"a": [1, 2]} ', '{"a":1}\n', "{}"]:
            ev = rp.read_batch(rp.write_batch([owned(1, properties=text)]))[0]
            self.assertEqual(ev.properties, __import__("json").loads(text))
        for text in ['{"a":}', '{"a":1} x', "{"]:
            ev = rp.read_batch(rp.write_batch([owned(1, properties=text)]))[0]
            with self.assertRaises(ValueError):
                ev.properties

    def test_bad_batches_and_names_are_refused(self):
        buf = rp.write_batch([owned(1)])
        with self.assertRaisesRegex(ValueError, "shorter than its header"):
            rp.read_batch(buf[:10])
        with self.assertRaisesRegex(ValueError, "not a version 1"):
            rp.read_batch(b"XXXX" + buf[4:])
        with self.assertRaisesRegex(ValueError, "its header implies"):
            rp.read_batch(buf + b"x")
        ev = rp.read_batch(buf)[0]
        with self.assertRaisesRegex(KeyError, "not an envelope field"):
            ev.field("amount")
        with self.assertRaisesRegex(KeyError, "not an envelope field"):
            ev.to_owned().set("amount", "1")


if __name__ == "__main__":
    unittest.main()
