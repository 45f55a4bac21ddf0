"""Compressed columns: how a chunk of one series (or a layout's timestamps, or rollup rows) is stored.

A chunk is a few equally long int64/float64 columns. Each column is turned into small numbers
first (timestamps: delta of deltas, zero for a steady poll; integral numbers such as counters:
deltas; other floats: XOR with the previous value, Gorilla's trick, so unchanged leading bits
become zero bytes), then byte-shuffled (all first bytes, then all second bytes, ...) so that the
zero bytes line up in long runs, and the whole chunk is one zstd frame. Every step is exact:
NaN payloads, -0.0 and infinities come back bit for bit. The transforms are vectorised over
many columns at once, so compacting a layout of 1,400 series costs a few numpy calls plus one
zstd call per series.
"""

from __future__ import annotations

import struct

import cramjam
import numpy as np

__all__ = ["decode", "encode", "encode_columns", "encode_matrix", "float_modes"]

VERSION = 1
LEVEL = 3
"""zstd level: 3 is zstd's default; higher levels gained < 3 % on farm data at 2-4x the CPU."""

TS, DELTA, XOR = 0, 1, 2
"""Column transforms: delta of deltas (int64), delta of integral floats, XOR of float bits;
``DECIMAL + k``: deltas of ``value * 10**k`` for numbers with k decimals (``124869.76``)."""
DECIMAL = 16
_DIGITS = range(1, 10)

_HEADER = struct.Struct("<BIB")  # version, rows, columns; then one mode byte per column
_SIGN = np.uint64(1 << 63)
_EXACT = float(2**52)


def float_modes(matrix: np.ndarray) -> np.ndarray:
    """Per column of a (rows, columns) float64 matrix: DELTA when every value is an integer that
    a delta keeps exact (counters, queue sizes, flags); DECIMAL + k when every value is the
    double nearest to a number with k decimals, so that ``round(v * 10**k) / 10**k`` gives it back
    bit for bit; else XOR."""
    finite = np.isfinite(matrix).all(axis=0) & (matrix.view(np.uint64) != _SIGN).all(axis=0)
    modes = np.full(matrix.shape[1], XOR, dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        integral = finite & ((np.abs(matrix) < _EXACT) & (np.floor(matrix) == matrix)).all(axis=0)
        modes[integral] = DELTA
        todo = np.flatnonzero(finite & ~integral)
        for k in _DIGITS:
            if not len(todo):
                break
            scale = 10.0**k
            part = matrix[:, todo]
            scaled = np.round(part * scale)
            ok = ((np.abs(scaled) < _EXACT) & (scaled / scale == part)).all(axis=0)
            modes[todo[ok]] = DECIMAL + k
            todo = todo[~ok]
    return modes


def _zigzag(values: np.ndarray) -> np.ndarray:
    return ((values << 1) ^ (values >> 63)).view(np.uint64)


def _unzigzag(values: np.ndarray) -> np.ndarray:
    return ((values >> np.uint64(1)) ^ (np.uint64(0) - (values & np.uint64(1)))).view(np.int64)


def _transform(column: np.ndarray, mode: int) -> np.ndarray:
    """One column as uint64 small numbers (the inverse is ``_restore``)."""
    if mode == TS:
        ints = column.astype(np.int64, copy=False)
        out = np.empty(len(ints), dtype=np.int64)
        if len(ints):
            out[0] = ints[0]
            deltas = np.diff(ints)
            if len(deltas):
                out[1] = deltas[0]
                out[2:] = np.diff(deltas)
        return _zigzag(out)
    if mode == DELTA:
        ints = column.astype(np.int64)
        return _zigzag(np.diff(ints, prepend=np.int64(0)))
    if mode > DECIMAL:
        ints = np.round(column * 10.0 ** (mode - DECIMAL)).astype(np.int64)
        return _zigzag(np.diff(ints, prepend=np.int64(0)))
    bits = np.ascontiguousarray(column, dtype=np.float64).view(np.uint64)
    out = bits.copy()
    out[1:] ^= bits[:-1]
    return out


def _restore(small: np.ndarray, mode: int) -> np.ndarray:
    if mode == TS:
        out = _unzigzag(small)
        out[1:] = np.cumsum(np.cumsum(out[1:])) + out[:1]
        return out
    if mode == DELTA:
        return np.cumsum(_unzigzag(small)).astype(np.float64)
    if mode > DECIMAL:
        return np.cumsum(_unzigzag(small)).astype(np.float64) / 10.0 ** (mode - DECIMAL)
    return np.bitwise_xor.accumulate(small).view(np.float64)


def encode_columns(columns: list[np.ndarray], modes: list[int]) -> bytes:
    """Equally long columns (int64 timestamps or float64 values) as one compressed chunk."""
    n = len(columns[0]) if columns else 0
    small = np.empty((len(columns), n), dtype=np.uint64)
    for i, (column, mode) in enumerate(zip(columns, modes)):
        small[i] = _transform(column, mode)
    planes = small.view(np.uint8).reshape(len(columns), n, 8).transpose(0, 2, 1)
    head = _HEADER.pack(VERSION, n, len(columns)) + bytes(modes)
    return bytes(cramjam.zstd.compress(head + planes.tobytes(), level=LEVEL))


def encode(ts: np.ndarray | None, values: np.ndarray) -> bytes:
    """A series chunk: its timestamps (None when they are a layout's shared ones) and values."""
    mode = int(float_modes(values.reshape(-1, 1))[0])
    if ts is None:
        return encode_columns([values], [mode])
    return encode_columns([ts, values], [TS, mode])


def encode_matrix(matrix: np.ndarray) -> list[bytes]:
    """Each column of a (rows, columns) float64 matrix as its own chunk without timestamps (the
    layout's shared ones): the transforms run once per mode over the whole matrix."""
    rows, k = matrix.shape
    modes = float_modes(matrix)
    small = matrix.view(np.uint64).copy()
    small[1:] ^= matrix.view(np.uint64)[:-1]
    for mode in np.unique(modes[modes != XOR]).tolist():
        cols = np.flatnonzero(modes == mode)
        scaled = matrix[:, cols] * (10.0 ** (mode - DECIMAL) if mode > DECIMAL else 1.0)
        ints = np.round(scaled).astype(np.int64)
        small[:, cols] = _zigzag(np.diff(ints, axis=0, prepend=np.zeros((1, len(cols)), dtype=np.int64)))
    planes = small.view(np.uint8).reshape(rows, k, 8).transpose(1, 2, 0).copy()
    compress = cramjam.zstd.compress
    return [bytes(compress(_HEADER.pack(VERSION, rows, 1) + bytes((int(modes[j]),)) + planes[j].tobytes(), level=LEVEL))
            for j in range(k)]


def decode(blob: bytes) -> list[np.ndarray]:
    """The columns of a chunk: int64 for timestamp columns, float64 for the others."""
    raw = memoryview(cramjam.zstd.decompress(blob))
    version, n, k = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise ValueError(f"chunk format version {version} is not known to this farmwatch")
    modes = bytes(raw[_HEADER.size:_HEADER.size + k])
    body = np.frombuffer(raw, dtype=np.uint8, offset=_HEADER.size + k, count=8 * n * k)
    small = body.reshape(k, 8, n).transpose(0, 2, 1).copy().view(np.uint64).reshape(k, n)
    return [_restore(small[i], mode) for i, mode in enumerate(modes)]
