"""TFRecord files and tf.train.Example messages without TensorFlow (TensorFlow reads what this writes).

Writing needs no TensorFlow, so conversion workers start fast and fork safely; `tf.data.TFRecordDataset`
and `tf.io.parse_single_example` read the result (the tests check it). Framing: uint64 length, masked
crc32c of the length, the data, masked crc32c of the data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

from mllib import MllibError


class RecordError(MllibError):
    """A record that fails its checks: names the shard, the record's number and its byte offset. `rest` is True when
    the framing cannot be trusted from there on (a corrupt length, a truncation): the rest of the shard is lost."""

    def __init__(self, message: str, shard: str = "", index: int = 0, offset: int = 0, rest: bool = False):
        super().__init__(message)
        self.shard, self.index, self.offset, self.rest = shard, index, offset, rest


MAX_RECORD = 1 << 31  # a length beyond this is corruption (a record is one image and its label)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    n = struct.pack("<Q", len(record))
    return n + struct.pack("<I", _masked_crc(n)) + record + struct.pack("<I", _masked_crc(record))


def read_records(f: BinaryIO, verify: bool = True, name: str = "", on_bad=None) -> Iterator[bytes | None]:
    """The records of a TFRecord stream, each frame's length and data CRCs checked (verify=True).

    A bad record raises RecordError (shard, record number, byte offset), or with `on_bad(error)` given: a record
    whose data CRC fails is reported and yields None in its place (its length is sound, reading goes on); a corrupt
    length or a truncation is reported once and ends the stream (nothing after it can be framed)."""
    offset = index = 0

    def bad(what: str, rest: bool):
        e = RecordError(f"{name}: record {index} at byte {offset}: {what}", name, index, offset, rest)
        if on_bad is None:
            raise e
        on_bad(e)

    while True:
        head = f.read(12)
        if not head:
            return
        if len(head) < 12:
            bad(f"truncated record header ({len(head)} of 12 bytes; the shard ends early)", True)
            return
        (n,) = struct.unpack("<Q", head[:8])
        if (verify and struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8])) or n > MAX_RECORD:
            bad("corrupt length field (its CRC does not match)", True)
            return
        data = f.read(n)
        tail = f.read(4)
        if len(data) < n or len(tail) < 4:
            bad(f"truncated record ({len(data)} of {n} bytes; the shard ends early)", True)
            return
        if verify and struct.unpack("<I", tail)[0] != _masked_crc(data):
            bad("data CRC mismatch (the record's bytes changed)", False)
            yield None
        else:
            yield data
        offset += 16 + n
        index += 1


# -- protobuf encoding of tf.train.Example ----------------------------------------------------------------------
def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _feature(value) -> bytes:
    if isinstance(value, bytes | str):
        value = [value]
    if isinstance(value, int | float):
        value = [value]
    value = list(value)
    if all(isinstance(v, bytes | str) for v in value) and value:
        body = b"".join(_ld(1, v.encode() if isinstance(v, str) else v) for v in value)
        return _ld(1, body)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return _ld(3, _ld(1, b"".join(_varint(v) for v in value)) if value else b"")
    floats = struct.pack(f"<{len(value)}f", *[float(v) for v in value])
    return _ld(2, _ld(1, floats) if value else b"")


def encode_example(features: dict) -> bytes:
    """tf.train.Example bytes from {name: bytes | str | int | float | list of one kind}."""
    entries = b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, _feature(v))) for k, v in sorted(features.items()))
    return _ld(1, entries)


def _read_varint(b: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if not c & 0x80:
            return result, i
        shift += 7


def _fields(b: memoryview):
    i, n = 0, len(b)
    while i < n:
        key, i = _read_varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            ln, i = _read_varint(b, i)
            yield field, b[i : i + ln]
            i += ln
        elif wire == 0:
            v, i = _read_varint(b, i)
            yield field, v
        elif wire == 5:
            yield field, b[i : i + 4]
            i += 4
        elif wire == 1:
            yield field, b[i : i + 8]
            i += 8
        else:
            raise RecordError(f"unsupported protobuf wire type {wire}")


def decode_example(data: bytes) -> dict:
    """{name: list of bytes | list of int | list of float} from tf.train.Example bytes."""
    out: dict = {}
    for f1, features in _fields(memoryview(data)):
        if f1 != 1:
            continue
        for f2, entry in _fields(features):
            if f2 != 1:
                continue
            name, value = None, []
            for f3, part in _fields(entry):
                if f3 == 1:
                    name = bytes(part).decode()
                elif f3 == 2:
                    for kind, lst in _fields(part):
                        for f5, v in _fields(lst):
                            if f5 != 1:
                                continue
                            if kind == 1:
                                value.append(bytes(v))
                            elif kind == 2:
                                value.extend(struct.unpack(f"<{len(v) // 4}f", v) if isinstance(v, memoryview)
                                             else [struct.unpack("<f", struct.pack("<I", v))[0]])
                            elif kind == 3:
                                if isinstance(v, memoryview):
                                    j = 0
                                    while j < len(v):
                                        x, j = _read_varint(v, j)
                                        value.append(x - (1 << 64) if x >= 1 << 63 else x)
                                else:
                                    value.append(v - (1 << 64) if v >= 1 << 63 else v)
            if name is not None:
                out[name] = value
    return out
