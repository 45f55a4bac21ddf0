"""Prometheus remote-write 1.0 bodies: a snappy-compressed ``prometheus.WriteRequest`` protobuf.

The message types come from the ``protobuf`` library, built from the protocol's descriptor at
import (the ``.proto`` of prometheus/prompb, fields as there: no generated code to keep in
step). Encoding goes around them on the hot path (the library builds ~130,000 samples/s in
Python objects, the full farm sends 65,000/s): a series' labels never change, so their protobuf
bytes are made once per series by the library and cached, and a cycle's samples (one per series,
one timestamp) are laid out with numpy. ``decode`` (tests, debugging) uses the library
throughout, so the two are checked against each other.
"""

from __future__ import annotations

import struct
from typing import Sequence

import cramjam
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["Label", "Sample", "TimeSeries", "WriteRequest", "decode", "encode_labels", "one_sample_each", "series_prefix",
           "snappy"]

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


def series_prefix(labels: bytes, ts: int) -> bytes:
    """The bytes of a TimeSeries with one sample at ``ts`` up to the sample's value: what is the
    same for a series in every request (for one length of the ts varint)."""
    inner = 1 + 8 + (1 + len(_varint(ts)) if ts else 0)
    return b"\x0a" + _varint(len(labels) + 2 + inner) + labels + b"\x12" + _varint(inner) + b"\x09"


def one_sample_each(prefixes: Sequence[bytes], values: np.ndarray, ts: int) -> bytes:
    """TimeSeries entries with one sample each, all at ``ts``: ``prefixes[i]`` from
    ``series_prefix`` (same ts), then value i and the timestamp. Vectorised: per series one join."""
    tail = b"\x10" + _varint(ts) if ts else b""
    width = 8 + len(tail)
    fixed = np.empty((len(values), width), dtype=np.uint8)
    fixed[:, :8] = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(-1, 8)
    fixed[:, 8:] = np.frombuffer(tail, dtype=np.uint8)
    data = fixed.tobytes()
    parts: list[bytes] = [b""] * (2 * len(values))
    parts[0::2] = prefixes
    parts[1::2] = [data[i:i + width] for i in range(0, len(data), width)]
    return b"".join(parts)


def snappy(request: bytes) -> bytes:
    """What is POSTed: the WriteRequest in snappy's block format (not framed), as the protocol says."""
    return bytes(cramjam.snappy.compress_raw(request))


def decode(data: bytes) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    """A POSTed body back into (labels, [(ts ms, value), …]) per series."""
    message = WriteRequest()
    message.ParseFromString(bytes(cramjam.snappy.decompress_raw(data)))
    return [({lb.name: lb.value for lb in ts.labels}, [(s.timestamp, s.value) for s in ts.samples])
            for ts in message.timeseries]
