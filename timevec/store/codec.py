"""The safetensors codec of the store: header parsing, encoding, decoding and ranged reads.

safetensors, never pickle: reading a vector runs no code. This module turns bytes into
tensors and back and nothing else — no IO, no layout: every offset is bounds-checked, so a
truncated or forged file is a :class:`StoreError` naming ``where`` rather than a crash or a
silent garbage tensor. Decoding is zero-copy (tensors and arrays are views into the buffer).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import safetensors.torch
import torch

from timevec.store.errors import StoreError

__all__ = [
    "NP_DTYPES",
    "ST_DTYPES",
    "bytes_per",
    "decode_numpy",
    "decode_ranges",
    "decode_safetensors",
    "encode_safetensors",
    "encode_shard",
    "parse_header",
    "tensor_bytes",
]

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
NP_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}
_HEAD_BYTES = 64 * 1024  # the first ranged read of a shard: enough for the header of any shard we write

Header = dict[str, tuple[torch.dtype, list[int], int, int]]


def bytes_per(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def encode_safetensors(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """One safetensors file: ``tensors`` (contiguous) with string ``metadata`` in its header."""
    return safetensors.torch.save(dict(tensors), metadata=metadata)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (any dtype, bf16 included)."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]  # numpy arrays are buffers; its stubs lack __buffer__


def encode_shard(
    tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[bytes, list[memoryview]]:
    """One safetensors file as (header bytes, one zero-copy piece per tensor), data in the ORDER
    of ``tensors``. The file is the header followed by the pieces.

    Unlike ``safetensors.torch.save`` (which orders data by dtype and name and copies every tensor
    into one new buffer) the data section follows the store's plan order — so for one dtype it is
    exactly a row of the Gram pass's N×D_k matrix — and the JSON header is written with sorted
    keys, so the same tensors give the same bytes in every process.
    """
    names = {dtype: name for name, dtype in ST_DTYPES.items()}
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    pieces: list[memoryview] = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in names:
            raise StoreError(f"tensor {name!r}: dtype {t.dtype} cannot be stored")
        piece = tensor_bytes(t.contiguous())
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + piece.nbytes]}
        offset += piece.nbytes
        pieces.append(piece)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # the data section starts 8-byte aligned, as safetensors pads it
    return struct.pack("<Q", len(text)) + text, pieces


def parse_header(
    buf: bytes | bytearray | memoryview, where: str, file_size: int | None
) -> tuple[dict[str, str], Header, int]:
    """The safetensors header → (metadata, {name: (dtype, shape, begin, end)}, data start offset)."""
    if len(buf) < 8:
        raise StoreError(f"{where}: truncated: {len(buf)} bytes, not even a safetensors header length")
    (n,) = struct.unpack("<Q", bytes(buf[:8]))
    if n > 100 * 1024 * 1024 or (file_size is not None and 8 + n > file_size):
        raise StoreError(f"{where}: truncated or corrupt: header length {n} does not fit the file")
    if len(buf) < 8 + n:
        raise StoreError(f"{where}: truncated: header needs {8 + n} bytes, got {len(buf)}")
    try:
        raw = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{where}: corrupt safetensors header: {exc}") from None
    if not isinstance(raw, dict):
        raise StoreError(f"{where}: corrupt safetensors header: not a JSON object")
    meta = raw.pop("__metadata__", None) or {}
    header: Header = {}
    for name, entry in raw.items():
        try:
            dtype = ST_DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: corrupt safetensors entry for tensor {name!r}: {exc!r}") from None
        if begin < 0 or end < begin or end - begin != math.prod(shape) * bytes_per(dtype):
            raise StoreError(f"{where}: corrupt safetensors entry for tensor {name!r}: bad data offsets")
        header[name] = (dtype, shape, begin, end)
    return meta, header, 8 + n


def decode_safetensors(
    buf: bytearray | bytes | memoryview, where: str, names: Iterable[str] | None = None
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Parse a whole safetensors file held in ``buf``: tensors are views into ``buf`` (no copy).

    Every offset is bounds-checked, so a truncated or forged file is an error naming ``where``
    rather than a crash or a silent garbage tensor.
    """
    meta, header, data_start = parse_header(buf, where, len(buf))
    available = len(buf) - data_start
    wanted = list(header) if names is None else list(names)
    out: dict[str, torch.Tensor] = {}
    for name in wanted:
        if name not in header:
            raise StoreError(f"{where}: tensor {name!r} is not in the shard")
        dtype, shape, begin, end = header[name]
        if end > available:
            raise StoreError(
                f"{where}: truncated: tensor {name!r} ends at byte {data_start + end}, the file has {len(buf)} bytes"
            )
        numel = math.prod(shape)
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(buf, dtype=dtype, count=numel, offset=data_start + begin).view(shape)
    return meta, out


def decode_numpy(
    buf: bytes | bytearray, where: str
) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Like :func:`decode_safetensors` but read-only numpy views (bf16 widened to fp32).

    Used where tensors are only read and copied (the Gram pass): no writable copy of the file is
    needed, and numpy's float16 → float32 conversion happens in the copy itself.
    """
    meta, header, data_start = parse_header(buf, where, len(buf))
    out: dict[str, np.ndarray] = {}
    for name, (dtype, shape, begin, end) in header.items():
        if data_start + end > len(buf):
            raise StoreError(
                f"{where}: truncated: tensor {name!r} ends at byte {data_start + end}, the file has {len(buf)} bytes"
            )
        numel = math.prod(shape)
        if dtype == torch.bfloat16:
            raw = np.frombuffer(buf, dtype=np.uint16, count=numel, offset=data_start + begin)
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=NP_DTYPES[dtype], count=numel, offset=data_start + begin)
        out[name] = arr.reshape(shape)
    return meta, out


def decode_ranges(
    read_range: Callable[[int, int], bytes], where: str, names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Only the named tensors of a file, by ranged reads: the header first, then one read per
    tensor. ``read_range(start, end)`` returns the file's bytes ``[start, end)``."""
    head = read_range(0, _HEAD_BYTES)
    (n,) = struct.unpack("<Q", head[:8]) if len(head) >= 8 else (None,)
    if n is None:
        raise StoreError(f"{where}: truncated: {len(head)} bytes, not even a safetensors header length")
    if len(head) < 8 + n:
        head = read_range(0, 8 + n)
    _, header, data_start = parse_header(head, where, None)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name not in header:
            raise StoreError(f"{where}: tensor {name!r} is not in the shard")
        dtype, shape, begin, end = header[name]
        data = read_range(data_start + begin, data_start + end)
        if len(data) != end - begin:
            raise StoreError(f"{where}: truncated: tensor {name!r} needs {end - begin} bytes, got {len(data)}")
        out[name] = (
            torch.frombuffer(bytearray(data), dtype=dtype).view(shape) if data else torch.empty(shape, dtype=dtype)
        )
    return out
