"""The store's fast checksum and the Gram's direct-read path (issue #13): round trips, old
sha256-only stores, corruption caught by xxh3_128, and the Gram against a dense float64 reference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from timevec.store import StoreError, VectorStore
from timevec.weights.vectors import TimeVector

# One tensor (768 fp32 columns) wider than a Gram panel (target 1024 bytes → 256 columns): 3 panels.
SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (48, 16),
    "layers.0.attn.weight": (16, 24),
    "layers.0.attn.bias": (24,),
    "layers.0.mlp.weight": (16, 20),
    "norm.weight": (16,),
}
TARGET = 1024


def _vec(seed: int, scale: float = 0.01) -> TimeVector:
    g = torch.Generator().manual_seed(seed)
    return TimeVector({n: scale * torch.randn(s, generator=g) for n, s in SHAPES.items()})


def _dense(v: TimeVector, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """What the store holds, as float64: each tensor cast to the store dtype, then widened."""
    return np.concatenate([v[n].to(dtype).double().numpy().ravel() for n in SHAPES])


def _store(tmp_path: Path, name: str, dtype: str = "float32", target: int = TARGET, **kwargs) -> VectorStore:
    store = VectorStore(str(tmp_path / name), **kwargs)
    store.init("tiny-base", _vec(0, 1.0).tensors, dtype=dtype, target_shard_bytes=target)
    return store


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_checksum_round_trip_and_selectable_sha256(tmp_path: Path) -> None:
    fast = _store(tmp_path, "fast")
    m = fast.put_vector("lm", "2014", _vec(1))
    assert m["checksum"] == "xxh3_128" and all("xxh3_128" in s and "sha256" not in s for s in m["shards"])
    assert fast.get_vector("lm", "2014").equal(_vec(1))
    again = fast.put_vector("lm", "2014", _vec(1))  # the same tensors give the same bytes
    assert [s["xxh3_128"] for s in again["shards"]] == [s["xxh3_128"] for s in m["shards"]]

    slow = VectorStore(fast.url, checksum="sha256")
    m2 = slow.put_vector("lm", "2015", _vec(2))
    assert m2["checksum"] == "sha256"
    path = Path(fast.root, "vectors/lm/2015", m2["shards"][0]["file"])
    assert m2["shards"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # a reader follows each manifest, whatever it would write itself
    assert fast.get_vector("lm", "2015").equal(_vec(2)) and fast.verify() == []
    with pytest.raises(StoreError, match="checksum 'md5' is not one of"):
        VectorStore(fast.url, checksum="md5")


def _put_old_way(store: VectorStore, period: str, vec: TimeVector) -> None:
    """A vector as the pre-xxHash writer stored it: safetensors.torch.save per shard (data ordered by
    name, not plan order) and a manifest with only ``sha256`` per shard and no ``checksum`` field."""
    info = store.info()
    directory = Path(store.root, "vectors/lm", period)
    directory.mkdir(parents=True)
    shards = []
    for k in range(store.num_shards):
        names = store.shard_names(k)
        meta = {"format": "pt", "timevec_format_version": "1", "vector": f"lm/{period}", "shard": str(k),
                "base_fingerprint": info["base_fingerprint"]}  # fmt: skip
        data = safetensors.torch.save({n: vec[n].contiguous() for n in names}, metadata=meta)
        (directory / f"shard-{k:05d}.safetensors").write_bytes(data)
        shards.append({"index": k, "file": f"shard-{k:05d}.safetensors", "sha256": hashlib.sha256(data).hexdigest(),
                       "bytes": len(data), "tensors": names})  # fmt: skip
    manifest = {"format_version": 1, "task": "lm", "period": period, "base_id": info["base_id"],
                "base_fingerprint": info["base_fingerprint"], "dtype": "float32", "created": "2026-01-01T00:00:00+00:00",
                "l2_norm": float(np.linalg.norm(_dense(vec))), "n_params": int(_dense(vec).size), "shards": shards,
                "run": {}}  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_old_sha256_only_store_is_still_read_and_mixes_with_new_vectors(tmp_path: Path) -> None:
    store = _store(tmp_path, "old", target=4096)  # shard 1 holds 4 tensors: name order ≠ plan order
    assert store.shard_names(1) != sorted(store.shard_names(1))
    old = [_vec(10), _vec(11)]
    for p, v in zip(("2012", "2013"), old, strict=True):
        _put_old_way(store, p, v)
    store.put_vector("lm", "2014", _vec(12))  # a new-format vector beside them
    assert store.get_vector("lm", "2012").equal(old[0]) and store.verify() == []
    keys = [("lm", "2012"), ("lm", "2013"), ("lm", "2014")]
    x = np.stack([_dense(v) for v in (*old, _vec(12))])
    ref = x @ x.T  # fp32 products: an entry near zero (a cancelling pair) is exact to ~1e-8 of |τi|·|τj|
    np.testing.assert_allclose(store.gram(keys), ref, rtol=1e-6, atol=1e-7 * np.abs(ref).max())
    _flip(Path(store.root, "vectors/lm/2013/shard-00001.safetensors"), -5)
    with pytest.raises(StoreError, match=r"lm/2013.*shard-00001\.safetensors.*sha256 mismatch"):
        store.get_vector("lm", "2013")
    with pytest.raises(StoreError, match=r"lm/2013.*shard-00001\.safetensors.*sha256 mismatch"):
        store.gram(keys)


def test_corruption_is_caught_by_the_fast_checksum(tmp_path: Path) -> None:
    store = _store(tmp_path, "corrupt")
    m = store.put_vector("lm", "2014", _vec(1))
    store.put_vector("lm", "2015", _vec(2))
    wide = next(s for s in m["shards"] if "embed.weight" in s["tensors"])  # 3 Gram panels
    path = Path(store.root, "vectors/lm/2014", wide["file"])
    _flip(path, wide["bytes"] - 7)  # in the last panel: the digest is checked after every panel is fed
    msg = rf"lm/2014.*{wide['file']}.*xxh3_128 mismatch .*the shard is corrupt"
    with pytest.raises(StoreError, match=msg):
        store.get_vector("lm", "2014")
    with pytest.raises(StoreError, match=msg):
        store.gram([("lm", "2015"), ("lm", "2014")])
    assert any(wide["file"] in p for p in store.verify("lm"))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(StoreError, match=rf"lm/2014.*{wide['file']}.*truncated or resized"):
        store.gram([("lm", "2014")])
    with pytest.raises(StoreError, match=rf"lm/2014.*{wide['file']}.*truncated"):
        store.gram([("lm", "2014")], verify=False)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gram_direct_path_equals_dense_float64(tmp_path: Path, dtype: str) -> None:
    store = _store(tmp_path, dtype, dtype=dtype)
    keys = [("lm", str(2012 + i)) for i in range(5)]
    vecs = [_vec(20 + i) + _vec(99) * 0.5 for i in range(5)]  # correlated, like real time vectors
    for (t, p), v in zip(keys, vecs, strict=True):
        store.put_vector(t, p, v)
    x = np.stack([_dense(v, getattr(torch, dtype)) for v in vecs])
    ref = x @ x.T
    np.testing.assert_allclose(store.gram(keys), ref, rtol=1e-6)
    np.testing.assert_allclose(store.gram(keys, verify=False, block_columns=5), ref, rtol=1e-6)
    np.testing.assert_allclose(store.gram(keys, exact=True), ref, rtol=1e-12)
