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

__all__ = ["decode", "decode_many", "encode", "encode_matrix", "encode_rows", "encode_stamps", "float_modes"]

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


def encode(ts: np.ndarray | None, values: np.ndarray) -> bytes:
    """A series chunk: its timestamps (None when they are a layout's shared ones) and values."""
    return encode_rows(None if ts is None else ts[None, :], [values[None, :]])[0]


def encode_stamps(ts: np.ndarray) -> bytes:
    """A chunk of timestamps only (a layout's, shared by its series' value chunks)."""
    return encode_rows(ts[None, :], [])[0]


def encode_matrix(matrix: np.ndarray) -> list[bytes]:
    """Each column of a (rows, columns) float64 matrix as its own chunk without timestamps (the
    layout's shared ones)."""
    return encode_rows(None, [np.ascontiguousarray(matrix.T)])


def encode_rows(ts: np.ndarray | None, values: list[np.ndarray]) -> list[bytes]:
    """K chunks of the same length at once: row k of ``ts`` (K, n) int64 (or no timestamps) and of
    each (K, n) float64 array in ``values`` make chunk k. The transforms run once per column and
    mode over all K rows, then one zstd call per chunk."""
    columns = ([ts] if ts is not None else []) + list(values)
    k, n = columns[0].shape
    small = np.empty((k, len(columns), n), dtype=np.uint64)
    modes = np.empty((k, len(columns)), dtype=np.uint8)
    for j, column in enumerate(columns):
        if j == 0 and ts is not None:
            modes[:, j] = TS
            ints = column.astype(np.int64, copy=False)
            out = np.zeros((k, n), dtype=np.int64)
            out[:, :1] = ints[:, :1]
            out[:, 1:2] = np.diff(ints[:, :2], axis=1)
            out[:, 2:] = np.diff(ints, n=2, axis=1)
            small[:, j] = _zigzag(out)
            continue
        modes[:, j] = float_modes(column.T)
        bits = column.view(np.uint64)
        xor = bits.copy()
        xor[:, 1:] ^= bits[:, :-1]
        small[:, j] = xor
        for mode in np.unique(modes[:, j]).tolist():
            if mode == XOR:
                continue
            rows = np.flatnonzero(modes[:, j] == mode)
            scaled = column[rows] * (10.0 ** (mode - DECIMAL) if mode > DECIMAL else 1.0)
            ints = np.round(scaled).astype(np.int64)
            small[rows, j] = _zigzag(np.diff(ints, axis=1, prepend=np.zeros((len(rows), 1), dtype=np.int64)))
    planes = small.view(np.uint8).reshape(k, len(columns), n, 8).transpose(0, 1, 3, 2).copy()
    compress = cramjam.zstd.compress
    return [bytes(compress(_HEADER.pack(VERSION, n, len(columns)) + modes[i].tobytes() + planes[i].tobytes(), level=LEVEL))
            for i in range(k)]


def decode(blob: bytes) -> list[np.ndarray]:
    """The columns of a chunk: int64 for timestamp columns, float64 for the others."""
    return decode_many([blob])[0]


def decode_many(blobs: list[bytes]) -> list[list[np.ndarray]]:
    """The columns of many chunks; chunks of one shape are restored together, vectorised."""
    out: list[list[np.ndarray]] = [[] for _ in blobs]
    shapes: dict[tuple[int, int], list[tuple[int, bytes, memoryview]]] = {}
    for i, blob in enumerate(blobs):
        raw = memoryview(cramjam.zstd.decompress(blob))
        version, n, k = _HEADER.unpack_from(raw)
        if version != VERSION:
            raise ValueError(f"chunk format version {version} is not known to this farmwatch")
        shapes.setdefault((n, k), []).append((i, bytes(raw[_HEADER.size:_HEADER.size + k]), raw[_HEADER.size + k:]))
    for (n, k), group in shapes.items():
        body = np.frombuffer(b"".join(bytes(part[:8 * n * k]) for _, _, part in group), dtype=np.uint8)
        small = body.reshape(len(group), k, 8, n).transpose(0, 1, 3, 2).copy().view(np.uint64).reshape(len(group), k, n)
        modes = np.frombuffer(b"".join(m for _, m, _ in group), dtype=np.uint8).reshape(len(group), k)
        columns = []
        for j in range(k):
            restored = np.empty((len(group), n), dtype=np.int64 if (modes[:, j] == TS).all() else np.float64)
            for mode in np.unique(modes[:, j]).tolist():
                rows = np.flatnonzero(modes[:, j] == mode)
                restored[rows] = _restore_rows(small[rows, j], mode)
            columns.append(restored)
        for g, (i, _, _) in enumerate(group):
            out[i] = [column[g] for column in columns]
    return out


def _restore_rows(small: np.ndarray, mode: int) -> np.ndarray:
    """The inverse of a column transform, along axis 1 of a (chunks, n) array."""
    if mode == TS:
        out = _unzigzag(small)
        out[:, 1:] = np.cumsum(np.cumsum(out[:, 1:], axis=1), axis=1) + out[:, :1]
        return out
    if mode == DELTA:
        return np.cumsum(_unzigzag(small), axis=1).astype(np.float64)
    if mode > DECIMAL:
        return np.cumsum(_unzigzag(small), axis=1).astype(np.float64) / 10.0 ** (mode - DECIMAL)
    return np.bitwise_xor.accumulate(small, axis=1).view(np.float64)
