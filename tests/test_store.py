"""VectorStore on a local folder and on a real S3 endpoint (SeaweedFS on loopback)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.reliability import kill_when
from tests.stores import store_factory
from timevec.config import StoreConfig
from timevec.data.models import fingerprint
from timevec.store import StoreError, VectorStore, shard_plan
from timevec.store.local_s3 import S3Server
from timevec.weights.vectors import TimeVector

REPO = Path(__file__).resolve().parents[1]

# A "small transformer": sizes differ so that the greedy plan has something to balance.
SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (40, 16),
    "layers.0.attn.weight": (16, 48),
    "layers.0.attn.bias": (48,),
    "layers.0.mlp.weight": (16, 32),
    "layers.1.attn.weight": (16, 48),
    "layers.1.mlp.weight": (32, 16),
    "norm.weight": (16,),
    "norm.bias": (16,),
}
TARGET = 4096  # bytes per shard: K = ceil(total/target) = 4 (fp32; fp16 stores use TARGET // 2)


def _tensors(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=g) for n, s in SHAPES.items()}


def _vec(seed: int) -> TimeVector:
    return TimeVector(_tensors(seed, 0.01))


def _dense(v: TimeVector) -> np.ndarray:
    return np.concatenate([v[n].numpy().astype(np.float64).ravel() for n in SHAPES])


# ---------------------------------------------------------------------------- backends


@pytest.fixture
def store(new_store: Callable[..., VectorStore]) -> VectorStore:
    s = new_store()
    s.init("tiny-base", _tensors(0), target_shard_bytes=TARGET)
    return s


def _corrupt(store: VectorStore, relpath: str, fn: Callable[[bytes], bytes]) -> None:
    """Rewrite a store file behind the store's back."""
    path = f"{store.root}/{relpath}"
    data = store.fs.cat_file(path)
    store.fs.pipe_file(path, fn(data))


# ---------------------------------------------------------------------------- plan and init


def test_shard_plan_is_balanced_and_complete() -> None:
    sizes = {n: int(np.prod(s)) * 4 for n, s in SHAPES.items()}
    k, plan = shard_plan(sizes, TARGET)
    assert k == -(-sum(sizes.values()) // TARGET) >= 3
    loads = [sum(sizes[n] for n in plan if plan[n] == i) for i in range(k)]
    assert set(plan) == set(sizes) and all(load > 0 for load in loads)
    assert max(loads) - min(loads) <= max(sizes.values())
    assert shard_plan(sizes, TARGET) == (k, plan)  # deterministic
    assert shard_plan({"a": 10}, 1)[0] == 1  # never more shards than tensors


def test_init_is_idempotent_and_refuses_another_base(store: VectorStore) -> None:
    info = store.info()
    assert info["format_version"] == 1 and info["dtype"] == "float32"
    assert info["base_fingerprint"] == fingerprint(_tensors(0)) == store.base_fingerprint
    assert store.num_shards >= 3 and info["shard_plan"]["num_shards"] == store.num_shards
    assert info["shapes"] == {n: list(s) for n, s in SHAPES.items()}
    again = VectorStore(store.url, store.storage_options)
    assert again.init("tiny-base", _tensors(0)) == info
    other = fingerprint(_tensors(1))
    with pytest.raises(StoreError) as err:
        again.init("other-base", _tensors(1))
    assert info["base_fingerprint"] in str(err.value) and other in str(err.value)
    base = store.get_base()
    assert all(torch.equal(base[n], t) for n, t in _tensors(0).items())
    assert store.verify() == []


def test_from_config_and_pickle(tmp_path: Path) -> None:
    cfg = StoreConfig(url=str(tmp_path / "cfg-store"), dtype="float16", target_shard_bytes=1024)
    s = VectorStore.from_config(cfg)
    s.init("tiny-base", _tensors(0))
    assert s.dtype == "float16" and s.num_shards >= 3
    s.put_vector("lm", "2014", _vec(1))
    clone = pickle.loads(pickle.dumps(s))
    assert clone.get_vector("lm", "2014").equal(s.get_vector("lm", "2014"))


def test_relative_local_url_is_pinned_to_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tune runs trials in their own working directory: a store opened as ./runs/x must stay the same store
    monkeypatch.chdir(tmp_path)
    s = VectorStore("./runs/rel")
    assert s.url == str(tmp_path / "runs" / "rel")
    s.init("tiny-base", _tensors(0))
    s.put_vector("lm", "2014", _vec(1))
    elsewhere = tmp_path / "trial-dir"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    clone = pickle.loads(pickle.dumps(s))
    assert clone.exists() and clone.get_vector("lm", "2014").equal(_vec(1))


# ---------------------------------------------------------------------------- round trips


def test_round_trip_bit_exact(store: VectorStore) -> None:
    vectors = {p: _vec(i) for i, p in enumerate(["2014-11", "2013", "2014-02", "2012"], start=1)}
    for p, v in vectors.items():
        m = store.put_vector("lm", p, v, {"seed": 42, "kind": "full", "train": {"loss": 1.5}})
        assert m["task"] == "lm" and m["period"] == p and m["run"]["seed"] == 42
        assert m["base_fingerprint"] == store.base_fingerprint and m["n_params"] == v.n_params
        assert m["l2_norm"] == pytest.approx(np.linalg.norm(_dense(v)), rel=1e-12)
        assert [s["index"] for s in m["shards"]] == list(range(store.num_shards))
    store.put_vector("cls", "2013", _vec(9))
    assert store.list_vectors() == [("cls", "2013"), ("lm", "2012"), ("lm", "2013"), ("lm", "2014-02"), ("lm", "2014-11")]
    assert store.list_vectors("cls") == [("cls", "2013")]
    assert store.has_vector("lm", "2013") and not store.has_vector("lm", "2015")
    for p, v in vectors.items():
        got = store.get_vector("lm", p)
        assert got.names == list(SHAPES) and got.equal(v)
        assert all(t.dtype == torch.float32 for t in got.tensors.values())
    assert store.manifest("lm", "2013")["run"]["train"] == {"loss": 1.5}
    shard0 = store.get_vector("lm", "2013", names=store.shard_names(0)).tensors
    assert set(shard0) == set(store.shard_names(0))
    assert all(torch.equal(t, vectors["2013"][n]) for n, t in shard0.items())
    assert store.verify() == []


def test_subset_reads_only_needed_shards(store: VectorStore) -> None:
    v = _vec(1)
    store.put_vector("lm", "2014", v)
    plan = store.info()["shard_plan"]["tensors"]
    name = "norm.bias"
    other = next(k for k in range(store.num_shards) if k != plan[name])
    # break a shard the subset does not need: the read must not touch it
    _corrupt(store, f"vectors/lm/2014/shard-{other:05d}.safetensors", lambda b: b[:10])
    for verify in (True, False):
        got = store.get_vector("lm", "2014", names=[name, "norm.weight"] if plan["norm.weight"] != other else [name], verify=verify)
        assert torch.equal(got[name], v[name])
    with pytest.raises(StoreError):
        store.get_vector("lm", "2014")


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_half_precision_stores(new_store: Callable[..., VectorStore], dtype: str, tol: float) -> None:
    s = new_store(dtype=dtype)
    s.init("tiny-base", _tensors(0), target_shard_bytes=TARGET // 2)
    assert s.num_shards >= 3
    v = _vec(3)
    m = s.put_vector("lm", "2015", v)
    assert m["dtype"] == dtype
    got = s.get_vector("lm", "2015")
    for name in SHAPES:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], v[name], rtol=tol, atol=tol * 0.01)
    # the base always stays fp32 and exact
    assert all(torch.equal(s.get_base()[n], t) for n, t in _tensors(0).items())
    assert m["l2_norm"] == pytest.approx(got.norm(), rel=1e-9)
    # the Gram pass decodes half precision itself (numpy, bf16 widened by hand): same values
    assert s.gram([("lm", "2015")])[0, 0] == pytest.approx(got.dot(got), rel=1e-6)
    assert s.gram([("lm", "2015")], exact=True)[0, 0] == pytest.approx(got.dot(got), rel=1e-12)
    # as stored: the store's own dtype, bit for bit what get_vector widens, in store order
    stored = s.get_tensors("lm", "2015")
    assert list(stored) == list(got.names)
    for name in SHAPES:
        assert stored[name].dtype == getattr(torch, dtype)
        assert torch.equal(stored[name].float(), got[name])
    part = s.get_tensors("lm", "2015", names=["norm.weight"])
    assert list(part) == ["norm.weight"] and torch.equal(part["norm.weight"], stored["norm.weight"])
    part["norm.weight"].add_(1.0)  # writable, and a copy of the file's bytes: the store is untouched
    assert torch.equal(s.get_tensors("lm", "2015")["norm.weight"], stored["norm.weight"])
    shard = s.manifest("lm", "2015")["shards"][0]["file"]
    _corrupt(s, f"vectors/lm/2015/{shard}", lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    with pytest.raises(StoreError, match=rf"lm/2015.*{shard}"):
        s.get_tensors("lm", "2015")
    if dtype == "float16":  # values that overflow fp16 are refused like NaN/Inf (bf16 has fp32's range)
        big = TimeVector(v.tensors | {"norm.weight": torch.full((16,), 1e6)})
        with pytest.raises(StoreError, match=r"lm/2016.*norm\.weight.*shard-0000\d\.safetensors.*float16"):
            s.put_vector("lm", "2016", big)


def test_gram_streamed_equals_dense(store: VectorStore) -> None:
    keys = [("lm", p) for p in ("2012", "2013", "2014", "2015", "2016")]
    vecs = {}
    for i, (t, p) in enumerate(keys):
        vecs[p] = _vec(10 + i) + (0.5 * _vec(99))  # correlated, like real time vectors
        store.put_vector(t, p, vecs[p])
    x = np.stack([_dense(vecs[p]) for _, p in keys])
    ref = x @ x.T
    gram = store.gram(keys)
    assert gram.dtype == np.float64 and gram.shape == (5, 5)
    np.testing.assert_allclose(gram, ref, rtol=1e-6)
    norms = np.array([store.manifest(t, p)["l2_norm"] for t, p in keys])  # what `timevec vectors` shows
    np.testing.assert_allclose(norms, np.sqrt(np.diag(ref)), rtol=1e-9)
    cos = gram / np.outer(norms, norms)
    np.testing.assert_allclose(cos, ref / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(x, axis=1)), rtol=1e-6)
    assert cos[0, 1] == pytest.approx(vecs["2012"].cosine(vecs["2013"]), rel=1e-6)
    # tiny column blocks exercise the blocked accumulation; exact=True multiplies in float64
    np.testing.assert_allclose(store.gram(keys, block_columns=7), ref, rtol=1e-6)
    np.testing.assert_allclose(store.gram(keys, exact=True, block_columns=100), ref, rtol=1e-12)
    assert store.gram([]).shape == (0, 0)


# ---------------------------------------------------------------------------- corruption → clear errors


SHARD_MSG = r"lm/2014.*shard-0000\d\.safetensors"


def test_truncated_shard(store: VectorStore) -> None:
    store.put_vector("lm", "2014", _vec(1))
    _corrupt(store, "vectors/lm/2014/shard-00001.safetensors", lambda b: b[: len(b) // 2])
    with pytest.raises(StoreError, match=r"lm/2014.*vectors/lm/2014/shard-00001\.safetensors.*truncated"):
        store.get_vector("lm", "2014")
    with pytest.raises(StoreError, match=r"lm/2014.*shard-00001\.safetensors.*truncated"):
        store.get_vector("lm", "2014", verify=False)
    problems = store.verify()
    assert len(problems) == 1 and "lm/2014" in problems[0] and "shard-00001" in problems[0]


def test_flipped_byte(store: VectorStore) -> None:
    store.put_vector("lm", "2014", _vec(1))

    def flip(b: bytes) -> bytes:
        buf = bytearray(b)
        buf[-3] ^= 0x40
        return bytes(buf)

    _corrupt(store, "vectors/lm/2014/shard-00002.safetensors", flip)
    with pytest.raises(StoreError, match=r"lm/2014.*shard-00002\.safetensors.*xxh3_128 mismatch"):
        store.get_vector("lm", "2014")
    with pytest.raises(StoreError, match=r"lm/2014.*shard-00002\.safetensors.*xxh3_128 mismatch"):
        store.gram([("lm", "2014")])
    assert any("shard-00002" in p for p in store.verify("lm"))


def test_missing_manifest(store: VectorStore) -> None:
    store.put_vector("lm", "2014", _vec(1))
    store.fs.rm(f"{store.root}/vectors/lm/2014/manifest.json")
    assert not store.has_vector("lm", "2014") and store.list_vectors() == []
    with pytest.raises(StoreError, match=r"lm/2014 not found.*vectors/lm/2014/manifest\.json.*shard-00000\.safetensors"):
        store.get_vector("lm", "2014")


def test_vector_from_another_base(store: VectorStore, new_store: Callable[..., VectorStore]) -> None:
    foreign = new_store()
    foreign.init("other-base", _tensors(7), target_shard_bytes=TARGET)
    foreign.put_vector("lm", "2014", _vec(1))
    for f in foreign.list_paths("vectors/lm/2014"):
        store.write_bytes(f, foreign.read_bytes(f))
    with pytest.raises(StoreError) as err:
        store.get_vector("lm", "2014")
    msg = str(err.value)
    assert "lm/2014" in msg and "another base" in msg and "shard-00000.safetensors" in msg
    assert foreign.base_fingerprint in msg and store.base_fingerprint in msg
    # a shard swapped in from the foreign vector under a valid manifest is caught by its header
    store.put_vector("lm", "2015", _vec(2))
    data = foreign.read_bytes("vectors/lm/2014/shard-00000.safetensors")
    store.write_bytes("vectors/lm/2015/shard-00000.safetensors", data)
    m = store.manifest("lm", "2015")
    import hashlib

    m["shards"][0]["sha256"], m["shards"][0]["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    store.write_bytes("vectors/lm/2015/manifest.json", json.dumps(m).encode())
    with pytest.raises(StoreError, match=r"lm/2015.*shard-00000\.safetensors.*base fingerprint"):
        store.get_vector("lm", "2015")


def test_shape_mismatch(store: VectorStore) -> None:
    bad = TimeVector(_vec(1).tensors | {"layers.0.mlp.weight": torch.zeros(32, 16)})
    with pytest.raises(StoreError, match=r"lm/2014.*layers\.0\.mlp\.weight.*shard-0000\d\.safetensors.*\[32, 16\]"):
        store.put_vector("lm", "2014", bad)
    missing = TimeVector({n: t for n, t in _vec(1).items() if n != "norm.bias"})
    with pytest.raises(StoreError, match=r"lm/2014.*norm\.bias.*shard-0000\d\.safetensors"):
        store.put_vector("lm", "2014", missing)
    extra = TimeVector(_vec(1).tensors | {"lm_head.weight": torch.zeros(2)})
    with pytest.raises(StoreError, match=r"lm/2014.*lm_head\.weight"):
        store.put_vector("lm", "2014", extra)
    assert not store.has_vector("lm", "2014") and store.list_paths("vectors") == []


def test_shape_mismatch_on_read(store: VectorStore, tmp_path: Path) -> None:
    """A shard whose tensor shape disagrees with the store's plan (forged, checksums valid)."""
    import hashlib

    import safetensors.torch

    store.put_vector("lm", "2014", _vec(1))
    plan = store.info()["shard_plan"]["tensors"]
    k = plan["layers.0.mlp.weight"]
    shard = store.get_vector("lm", "2014", names=store.shard_names(k)).tensors
    shard["layers.0.mlp.weight"] = shard["layers.0.mlp.weight"].reshape(32, 16).contiguous()
    meta = {"base_fingerprint": store.base_fingerprint}
    data = safetensors.torch.save(shard, metadata=meta)
    store.write_bytes(f"vectors/lm/2014/shard-{k:05d}.safetensors", data)
    m = store.manifest("lm", "2014")
    m["shards"][k].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    store.write_bytes("vectors/lm/2014/manifest.json", json.dumps(m).encode())
    with pytest.raises(StoreError, match=rf"lm/2014.*shard-{k:05d}\.safetensors.*layers\.0\.mlp\.weight.*\[32, 16\]"):
        store.get_vector("lm", "2014")


def test_nan_and_inf_are_refused(store: VectorStore) -> None:
    for bad_value in (float("nan"), float("inf")):
        v = _vec(1)
        v.tensors["layers.1.attn.weight"][3, 4] = bad_value
        with pytest.raises(StoreError, match=r"lm/2014.*layers\.1\.attn\.weight.*shard-0000\d\.safetensors.*NaN/Inf"):
            store.put_vector("lm", "2014", v)
    assert not store.has_vector("lm", "2014") and store.list_paths("vectors") == []


def test_bad_names_never_escape_the_root(store: VectorStore) -> None:
    for task in ("../x", "LM", "lm/../..", "", "1lm"):
        with pytest.raises(StoreError, match="task"):
            store.put_vector(task, "2014", _vec(1))
    for period in ("../x", "2014/../..", "14", "2014-13", "2014-1"):
        with pytest.raises(StoreError, match="period"):
            store.get_vector("lm", period)
    for rel in ("../x", "/etc/passwd", "a/../../b", "a//b", "s3://other/x", ""):
        with pytest.raises(StoreError, match="path"):
            store.write_bytes(rel, b"x")
    for name in ("../x", "a/b", ""):
        with pytest.raises(StoreError, match="table name"):
            store.write_table(name, pd.DataFrame({"a": [1]}))


def test_delete_and_overwrite(store: VectorStore) -> None:
    store.put_vector("lm", "2014", _vec(1))
    store.put_vector("lm", "2014-01", _vec(2))
    store.put_vector("lm", "2014", _vec(3))  # overwrite
    assert store.get_vector("lm", "2014").equal(_vec(3))
    assert store.delete_vector("lm", "2014") is True
    assert store.list_vectors() == [("lm", "2014-01")]  # a sibling sharing the prefix survives
    assert store.get_vector("lm", "2014-01").equal(_vec(2))
    assert store.delete_vector("lm", "2014") is False
    assert not any(p.startswith("vectors/lm/2014/") for p in store.list_paths(""))


# ---------------------------------------------------------------------------- writer killed mid-write

CHILD = textwrap.dedent(
    """
    import json, os, sys, time, torch
    from timevec.store import VectorStore
    from timevec.weights.vectors import TimeVector

    url, options, marker, mode, shapes = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    store = VectorStore(url, options, io_threads=1)
    original = VectorStore._write

    def hang():
        open(marker, "w").close()
        time.sleep(600)

    if mode == "between_shards":
        def write(self, path, data):
            original(self, path, data)
            if path.endswith("shard-00001.safetensors"):
                hang()
        VectorStore._write = write
    else:
        VectorStore._publish_manifest = lambda self, path, manifest, label: hang()
    g = torch.Generator().manual_seed(123)
    vec = TimeVector({n: torch.randn(s, generator=g) for n, s in shapes.items()})
    store.put_vector("lm", "2014", vec)
    """
)


# One child per backend (each child pays a torch import): the two kill points are split between them.
@pytest.mark.parametrize("backend,mode", [("local", "between_shards"), ("s3", "before_manifest")])
def test_killed_writer_leaves_no_visible_vector(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, mode: str
) -> None:
    store = store_factory(request, tmp_path, backend)()
    store.init("tiny-base", _tensors(0), target_shard_bytes=TARGET)
    if mode == "between_shards":
        store.put_vector("lm", "2014", _vec(1))  # an overwrite killed half way must not leave a hybrid
    marker = tmp_path / "marker"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store.url, json.dumps(store.storage_options), str(marker), mode, json.dumps(SHAPES)],
        env=env,
        cwd=REPO,
    )
    kill_when(child, marker.exists, "the writer's kill point", timeout=60)
    assert child.returncode == -signal.SIGKILL
    leftovers = store.list_paths("vectors/lm/2014")
    assert any(p.endswith(".safetensors") for p in leftovers) and not any(p.endswith("manifest.json") for p in leftovers)
    assert not store.has_vector("lm", "2014") and store.list_vectors() == []
    with pytest.raises(StoreError, match=r"lm/2014 not found.*unfinished write"):
        store.get_vector("lm", "2014")
    store.put_vector("lm", "2014", _vec(5))
    assert store.get_vector("lm", "2014").equal(_vec(5))
    assert store.verify() == []
    if not store.url.startswith("s3://"):
        names = os.listdir(os.path.join(store.root, "vectors/lm/2014"))
        assert not any(".tmp-" in n for n in names), names


# ---------------------------------------------------------------------------- credentials


def test_no_credentials_anywhere(s3_server: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    s3 = s3_server
    caplog.set_level(logging.DEBUG, logger="timevec")
    caplog.set_level(logging.INFO)
    secrets = [s3.secret_key, s3.access_key]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3.secret_key  # the store reads the standard chain
    with pytest.raises(StoreError, match="AWS chain"):
        VectorStore(s3.url("x"), s3.storage_options | {"secret": s3.secret_key})
    with pytest.raises(StoreError, match="AWS chain"):
        VectorStore(s3.url("x"), s3.storage_options | {"key": s3.access_key})
    store = VectorStore(s3.url(f"cred-{uuid.uuid4().hex[:8]}"), s3.storage_options)
    store.init("tiny-base", _tensors(0), target_shard_bytes=TARGET)
    store.put_vector(
        "lm",
        "2014",
        _vec(1),
        {"env": dict(os.environ), "storage": {"secret": s3.secret_key}, "note": f"key={s3.access_key}"},
    )
    store.write_table("cells", pd.DataFrame({"a": [1.0]}))
    store.write_bytes("reports/index.html", b"<html></html>")
    store.gram([("lm", "2014")])
    store.verify()
    paths = store.list_paths("")
    assert "store.json" in paths and "vectors/lm/2014/manifest.json" in paths
    for rel in paths:
        data = store.read_bytes(rel)
        for secret in secrets:
            assert secret.encode() not in data, rel
    for text in (caplog.text, repr(store), str(store), store.ray_storage_path(), json.dumps(store.storage_options)):
        for secret in secrets:
            assert secret not in text
    assert pickle.dumps(store).find(s3.secret_key.encode()) == -1


# ---------------------------------------------------------------------------- tables, files, Ray


def test_tables(store: VectorStore) -> None:
    assert not store.has_table("cells")
    with pytest.raises(StoreError, match="table cells not found"):
        store.read_table("cells")
    assert store.read_table("cells", default=None) is None  # a table a stage may not have written yet
    df = pd.DataFrame({"task": ["lm", "lm"], "train": ["2014", "2015"], "metric": [1.5, 2.5], "n": [3, 4]})
    store.write_table("cells", df)
    assert store.read_table("cells", default=None).equals(df)
    store.append_table("cells", df.iloc[:1])
    store.append_table("cells", df[["n", "metric", "train", "task"]].iloc[1:])  # column order is free
    got = store.read_table("cells")
    assert len(got) == 4 and list(got.columns) == list(df.columns)
    assert got["metric"].tolist() == [1.5, 2.5, 1.5, 2.5]
    with pytest.raises(StoreError, match=r"table cells.*'extra'"):
        store.append_table("cells", df.assign(extra=1))
    with pytest.raises(StoreError, match=r"table cells.*'n'"):
        store.append_table("cells", df.drop(columns="n"))
    with pytest.raises(StoreError, match=r"table cells.*'metric'"):
        store.append_table("cells", df.assign(metric=["a", "b"]))
    store.write_table("cells", df.iloc[:1])  # replace
    assert len(store.read_table("cells")) == 1
    store.append_table("fresh", df)
    assert store.read_table("fresh").equals(df)
    assert store.list_paths("results") == ["results/cells.parquet", "results/fresh.parquet"]


def test_table_appends_are_parts_folded_atomically(store: VectorStore) -> None:
    """An append publishes one part file and leaves the table file alone; a read sees both in order;
    compaction folds them in (geometrically, and on request) as a new generation, atomically:
    parts of another generation — a crash between publishing and cleaning up, or a table file
    deleted by hand — are never read as the table's rows."""
    import io

    import pyarrow.parquet as pq

    df = pd.DataFrame({"key": [f"k{i}" for i in range(8)], "value": [float(i) for i in range(8)]})
    store.write_table("cells", df.iloc[:4])
    file_before = store.read_bytes("results/cells.parquet")
    store.append_table("cells", df.iloc[4:5])
    store.append_table("cells", df.iloc[5:6])
    parts = [p for p in store.list_paths("results") if p.startswith("results/cells.parts/")]
    assert len(parts) == 2 and store.read_bytes("results/cells.parquet") == file_before  # not rewritten
    assert store.read_table("cells")["key"].tolist() == [f"k{i}" for i in range(6)]
    stale = {p: store.read_bytes(p) for p in parts}
    store.append_table("cells", df.iloc[6:8])  # the parts would hold as many rows as the table file: folded
    assert store.list_paths("results") == ["results/cells.parquet"]
    assert pq.read_table(io.BytesIO(store.read_bytes("results/cells.parquet"))).to_pandas().equals(df)
    for rel, data in stale.items():  # as if a crash had come between the new file and the cleanup
        store.write_bytes(rel, data)
    assert store.read_table("cells").equals(df)
    store.append_table("cells", df.iloc[:1])
    assert store.read_table("cells")["key"].tolist() == [*df["key"], "k0"]
    assert store.compact_tables() == ["cells"] and store.compact_tables() == []
    assert store.list_paths("results") == ["results/cells.parquet"]
    assert pq.read_table(io.BytesIO(store.read_bytes("results/cells.parquet"))).num_rows == 9
    store.append_table("cells", df.iloc[:1])  # a part of the current table file, then the file deleted by hand
    store.remove_paths(["results/cells.parquet"])
    assert not store.has_table("cells")
    store.write_table("cells", df.iloc[:2])  # a new table: the orphan part is not adopted
    assert store.read_table("cells").equals(df.iloc[:2])
    assert store.list_paths("results") == ["results/cells.parquet"]


def test_raw_files_and_ray_path(store: VectorStore) -> None:
    store.write_bytes("reports/figs/a.png", b"png")
    store.write_bytes("reports/index.html", b"<html/>")
    assert store.read_bytes("reports/figs/a.png") == b"png"
    assert store.exists_path("reports/index.html") and not store.exists_path("reports/nope.html")
    assert store.list_paths("reports") == ["reports/figs/a.png", "reports/index.html"]
    assert store.list_paths("reports/") == store.list_paths("reports")
    with pytest.raises(StoreError, match="reports/nope.html not found"):
        store.read_bytes("reports/nope.html")
    ray_path = store.ray_storage_path()
    if store.url.startswith("s3://"):
        endpoint = store.storage_options["endpoint_url"].removeprefix("http://")
        assert ray_path == f"s3://{store.root}/ray?endpoint_override={endpoint}&scheme=http"
    else:
        assert os.path.isabs(ray_path) and ray_path == os.path.join(store.root, "ray")
    assert store.ray_storage_path("tune").split("?")[0].endswith("/tune")


def test_relative_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = VectorStore("./runs/demo")
    s.init("tiny-base", _tensors(0), target_shard_bytes=TARGET)
    s.put_vector("lm", "2014", _vec(1))
    assert (tmp_path / "runs/demo/vectors/lm/2014/manifest.json").is_file()
    assert os.path.isabs(s.root) and s.ray_storage_path() == str(tmp_path / "runs/demo/ray")
    assert VectorStore(f"file://{tmp_path}/runs/demo").get_vector("lm", "2014").equal(_vec(1))
