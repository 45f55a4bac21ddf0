"""Prometheus remote-write 1.0 bodies: a snappy-compressed ``prometheus.WriteRequest`` protobuf.

The message types come from the ``protobuf`` library, built from the protocol's descriptor at
import (the ``.proto`` of prometheus/prompb, fields as there: no generated code to keep in
step). Encoding goes around them on the hot path: a series' labels never change, so their
protobuf bytes are made once per series by the library and cached, and only each sample (a
double and a varint) is appended per request. ``decode`` (tests, debugging) uses the library
throughout, so the two are checked against each other.
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence

import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["Label", "Sample", "TimeSeries", "WriteRequest", "body", "decode", "encode_labels", "request"]

_FIELD = descriptor_pb2.FieldDescriptorProto


def _messages() -> dict[str, type]:
    proto = descriptor_pb2.FileDescriptorProto(name="farmwatch_prompb_remote.proto", package="prometheus",
                                               syntax="proto3")
    spec = {
        "Label": [("name", 1, _FIELD.TYPE_STRING, None, False), ("value", 2, _FIELD.TYPE_STRING, None, False)],
        "Sample": [("value", 1, _FIELD.TYPE_DOUBLE, None, False), ("timestamp", 2, _FIELD.TYPE_INT64, None, False)],
        "TimeSeries": [("labels", 1, _FIELD.TYPE_MESSAGE, ".prometheus.Label", True),
                       ("samples", 2, _FIELD.TYPE_MESSAGE, ".prometheus.Sample", True)],
        "WriteRequest": [("timeseries", 1, _FIELD.TYPE_MESSAGE, ".prometheus.TimeSeries", True)],
    }
    for name, fields in spec.items():
        msg = proto.message_type.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            field = msg.field.add(name=fname, number=number, type=ftype,
                                  label=_FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
            for name in spec}


_CLASSES = _messages()
Label, Sample, TimeSeries, WriteRequest = (_CLASSES[n] for n in ("Label", "Sample", "TimeSeries", "WriteRequest"))
_DOUBLE = struct.Struct("<d")
_ZERO = _DOUBLE.pack(0.0)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 timestamps before 1970 are ten-byte varints, as protobuf writes them
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_labels(labels: Sequence[tuple[str, str]]) -> bytes:
    """The protobuf bytes of a series' labels (field 1 of TimeSeries, repeated), made by the library.
    Prometheus wants them sorted by name, ``__name__`` included."""
    series = TimeSeries(labels=[Label(name=k, value=v) for k, v in sorted(labels)])
    return series.SerializeToString()


def _sample(ts: int, value: float) -> bytes:
    """One Sample as a length-delimited field 2 of TimeSeries; zero fields are left out, as proto3 does."""
    packed = _DOUBLE.pack(value)
    inner = (b"\x09" + packed if packed != _ZERO else b"") + (b"\x10" + _varint(ts) if ts else b"")
    return b"\x12" + _varint(len(inner)) + inner


def request(series: Iterable[tuple[bytes, Sequence[tuple[int, float]]]]) -> bytes:
    """A WriteRequest from (encoded labels, [(ts ms, value), …]) per series, uncompressed: the
    bytes the library would write for the same message."""
    parts: list[bytes] = []
    for labels, samples in series:
        encoded = b"".join([_sample(ts, value) for ts, value in samples])
        parts += (b"\x0a", _varint(len(labels) + len(encoded)), labels, encoded)
    return b"".join(parts)


def body(series: Iterable[tuple[bytes, Sequence[tuple[int, float]]]]) -> bytes:
    """What is POSTed: the WriteRequest, snappy block format (not framed), as the protocol says."""
    return bytes(cramjam.snappy.compress_raw(request(series)))


def decode(data: bytes) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    """A POSTed body back into (labels, [(ts ms, value), …]) per series."""
    message = WriteRequest()
    message.ParseFromString(bytes(cramjam.snappy.decompress_raw(data)))
    return [({lb.name: lb.value for lb in ts.labels}, [(s.timestamp, s.value) for s in ts.samples])
            for ts in message.timeseries]
