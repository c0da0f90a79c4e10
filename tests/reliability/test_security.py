"""Security: credentials are never written or logged; nothing read back is unpickled; paths built
from data cannot leave the store root."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import time
import uuid
from pathlib import Path

import pytest
import ray
import torch

from tests.components import require
from tests.reliability import (
    REPO,
    cli_subprocess,
    copy_store,
    grep_bytes,
    random_vector,
    write_config,
)
from timevec.store import StoreError, VectorStore


@ray.remote(num_cpus=0)
def _worker_env(name: str) -> str | None:
    return os.environ.get(name)


def _s3_store(s3_server, base_store: Path, prefix: str) -> VectorStore:
    local = VectorStore(str(base_store))
    store = VectorStore(s3_server.url(prefix), s3_server.storage_options)
    store.init(local.base_id, local.get_base(), dtype=local.dtype)
    return store


# ---------------------------------------------------------------------------- credentials


@pytest.fixture(scope="module")
def s3_pipeline(ray_session: str, s3_server, base_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny pipeline (finetune, evaluate, analyze, report) on S3 with the keys in the environment;
    returns where the keys were found, by kind of output."""
    if ray.get(_worker_env.remote("AWS_SECRET_ACCESS_KEY")) != os.environ.get("AWS_SECRET_ACCESS_KEY"):
        require("s3", "Ray was started before the S3 server: its workers lack the server's keys")
    secrets = {s3_server.secret_key: "secret key", s3_server.access_key: "access key id"}
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key  # the standard AWS chain holds them
    tmp = tmp_path_factory.mktemp("s3-pipeline")
    prefix = f"cred-{uuid.uuid4().hex[:8]}"
    store = _s3_store(s3_server, base_store, prefix)
    config = write_config(
        tmp / "s3.yaml", store.url, f"store.storage_options.endpoint_url={s3_server.endpoint_url}",
        "periods.end='2015'", "training.steps=4",
    )
    from timevec.cli import main

    logs, out, err = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # what the CLI logs by default
    began = time.time() - 1
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", str(config), "--stages", "finetune,evaluate,analyze,report"])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert code == 0, out.getvalue()[-2000:] + err.getvalue()[-2000:]
    assert store.list_vectors() == [("lm", "2014"), ("lm", "2015")]

    def found(data: bytes) -> list[str]:
        return [secrets[s] for s in grep_bytes(data, list(secrets))]

    leaks: dict[str, dict[str, list[str]]] = {"store": {}, "logs": {}, "ray_runtime_env_logs": {}, "local_files": {}}
    # every object in the bucket: store.json, base, vectors and manifests, tables, the report, and
    # Tune's results, checkpoints and experiment state under the Ray storage path (<store>/ray on S3)
    objects = store.fs.find(s3_server.bucket)
    mine = [o for o in objects if o.startswith(f"{s3_server.bucket}/{prefix}/")]
    assert any(o.endswith("reports/index.html") for o in mine)
    assert any("/ray/" in o and o.endswith("result.json") for o in mine), "no Tune results on S3"
    assert any("/vectors/" in o and o.endswith("manifest.json") for o in mine)
    for o in objects:
        if hits := found(store.fs.cat_file(o)):
            leaks["store"][o] = hits
    for name, text in (("log records", logs.getvalue()), ("stdout", out.getvalue()), ("stderr", err.getvalue())):
        if hits := found(text.encode()):
            leaks["logs"][name] = hits
    # everything local the run wrote: the Ray session (driver, worker, raylet and GCS logs, Tune's
    # staging) and Tune's default results folder
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    scanned = 0
    for directory in (session, Path.home() / "ray_results", tmp):
        for path in directory.rglob("*") if directory.exists() else []:
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_mtime < began or path.stat().st_size > 64 << 20:
                    continue
                scanned += 1
                if hits := found(path.read_bytes()):
                    kind = "ray_runtime_env_logs" if path.name.startswith("runtime_env") else "local_files"
                    leaks[kind][str(path)] = hits
            except OSError:
                continue
    assert scanned > 0 and len(mine) > 10
    return leaks


def test_no_credentials_in_the_store_tune_results_or_reports(s3_pipeline: dict) -> None:
    assert s3_pipeline["store"] == {}


def test_no_credentials_in_logs_or_output(s3_pipeline: dict) -> None:
    """timevec's log records and printed output, and every other local file of the run (Ray
    worker/driver logs, Tune staging) except Ray's runtime-env agent log (next test)."""
    assert s3_pipeline["logs"] == {}
    assert s3_pipeline["local_files"] == {}


def test_no_credentials_in_ray_runtime_env_logs(s3_pipeline: dict) -> None:
    """Tune copies the driver's AWS_* variables into every trial's runtime_env (ray/tune/execution/class_cache.py)
    and Ray's runtime_env_agent.log prints runtime envs at INFO; the nodes here hold the keys already (Ray was
    started after the S3 server), so timevec.distributed.runtime takes them out of Tune's copy."""
    assert s3_pipeline["ray_runtime_env_logs"] == {}


def test_keys_the_nodes_lack_stay_in_tunes_copy(s3_server, ray_session: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a node was not started with the driver's keys, trials need Tune's copy: it stays (and a warning says so)."""
    from ray.tune.execution import class_cache

    from timevec.distributed.runtime import keep_credentials_out_of_trial_envs

    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", set(class_cache.ENV_VARS_TO_PROPAGATE) | {"AWS_SESSION_TOKEN"})
    monkeypatch.setenv("AWS_SESSION_TOKEN", f"only-the-driver-has-{uuid.uuid4().hex}")
    assert keep_credentials_out_of_trial_envs() is False
    assert "AWS_SESSION_TOKEN" in class_cache.ENV_VARS_TO_PROPAGATE
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    if ray.get(_worker_env.remote("AWS_SECRET_ACCESS_KEY")) != os.environ.get("AWS_SECRET_ACCESS_KEY"):
        require("s3", "Ray was started before the S3 server: its workers lack the server's keys")
    assert keep_credentials_out_of_trial_envs() is True  # the S3 server's keys, which the nodes hold, leave the copy
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}.isdisjoint(class_cache.ENV_VARS_TO_PROPAGATE)


def test_verbose_cli_logs_no_credentials(s3_server, base_store: Path, tmp_path: Path) -> None:
    store = _s3_store(s3_server, base_store, f"cred-v-{uuid.uuid4().hex[:8]}")
    store.put_vector("lm", "2014", random_vector(store, 1))
    config = write_config(tmp_path / "s3.yaml", store.url, f"store.storage_options.endpoint_url={s3_server.endpoint_url}",
                          "periods.end='2014'")
    result = cli_subprocess("-vv", "vectors", config)  # -vv: DEBUG
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "DEBUG" in output and "2014" in result.stdout
    assert s3_server.secret_key not in output
    assert s3_server.access_key not in output


# ---------------------------------------------------------------------------- never unpickle

UNPICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module in UNPICKLERS:
            bad = [a.name for a in node.names if a.name in ("load", "loads", "Unpickler", "open")]
            if bad:
                out.append(f"{where}: from {node.module} import {', '.join(bad)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, last = name.rpartition(".")
        kwargs = {k.arg: k.value for k in node.keywords}
        if head.split(".")[-1] in UNPICKLERS and last in ("load", "loads", "Unpickler", "open"):
            out.append(f"{where}: {name}()")
        elif last == "read_pickle" or name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            out.append(f"{where}: {name}()")
        elif name == "torch.load" or (last == "load" and head.endswith("torch")):
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                out.append(f"{where}: torch.load() without weights_only=True")
        elif name in ("np.load", "numpy.load"):
            flag = kwargs.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                out.append(f"{where}: {name}(allow_pickle=True)")
    return out


def test_source_tree_never_unpickles() -> None:
    files = [p for d in ("timevec", "jobs", "bench", "cluster") if (REPO / d).exists() for p in (REPO / d).rglob("*.py")]
    assert len(files) > 10
    violations = [v for f in files for v in _violations(f)]
    assert violations == []
    torch_loads = [f for f in files if "torch.load(" in f.read_text()]
    assert torch_loads, "expected the fleet's checkpoint loader to use torch.load(weights_only=True)"
    for f in files:
        assert "pickle.load" not in f.read_text(), f


def test_source_tree_never_restores_a_tuner_from_storage() -> None:
    files = [p for d in ("timevec", "jobs") if (REPO / d).exists() for p in (REPO / d).rglob("*.py")]
    restores = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and _dotted(node.func).endswith("Tuner.restore"):
                restores.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert restores == []


class _Payload:
    """Unpickling this creates ``path``: proof that code from the file ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _fix_manifest(store: VectorStore, task: str, period: str, k: int, data: bytes) -> None:
    manifest = store.manifest(task, period)
    manifest["shards"][k].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    store.write_bytes(f"vectors/{task}/{period}/manifest.json", json.dumps(manifest).encode())


def test_shards_and_checkpoints_with_a_pickle_payload_are_refused(base_store: Path, tmp_path: Path) -> None:
    store = VectorStore(str(copy_store(base_store, tmp_path / "store")))
    store.put_vector("lm", "2014", random_vector(store, 1))
    marker = tmp_path / "pwned"
    raw = pickle.dumps(_Payload(str(marker)))
    zipped = tmp_path / "payload.pt"
    torch.save({"model": _Payload(str(marker))}, zipped)
    for payload in (raw, zipped.read_bytes()):
        store.write_bytes("vectors/lm/2014/shard-00000.safetensors", payload)
        _fix_manifest(store, "lm", "2014", 0, payload)  # the attacker controls the manifest too
        for read in (lambda: store.get_vector("lm", "2014"), lambda: store.get_vector("lm", "2014", verify=False),
                     lambda: store.get_vector("lm", "2014", names=store.shard_names(0)), lambda: store.gram([("lm", "2014")])):
            with pytest.raises(StoreError, match=r"lm/2014.*shard-00000\.safetensors"):
                read()
        problems = store.verify()
        assert len(problems) == 1 and "lm/2014" in problems[0]
        assert not marker.exists()

    # a planted Tune checkpoint: the fleet loads train_state.pt with torch.load(weights_only=True)
    from timevec.distributed.checkpoints import earlier_checkpoint, load_checkpoint
    from timevec.distributed.storage import RayStorage
    from timevec.train.plan import RunSpec

    run = RunSpec("lm", "2014", "year")
    checkpoint = tmp_path / "ray" / "exp" / f"{run.key}_00000" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    (checkpoint / "meta.json").write_text(json.dumps({"fingerprint": "f" * 64, "step": 4}))
    (checkpoint / "train_state.pt").write_bytes(zipped.read_bytes())
    with pytest.raises(Exception) as err:
        load_checkpoint(str(checkpoint))
    assert "weights_only" in str(err.value) or "Unpickl" in type(err.value).__name__
    local = RayStorage(str(tmp_path / "ray"), None, str(tmp_path / "ray"))
    assert earlier_checkpoint(local, "exp", run, "f" * 64) is None  # skipped, not loaded
    assert not marker.exists()


# ---------------------------------------------------------------------------- paths stay inside the root

BAD_RELPATHS = [
    "../x", "../../etc/passwd", "/etc/passwd", "a/../../b", "reports/../../x", "reports/./x", "reports//x",
    "..\\x", "reports\\..\\..\\x", "file:///etc/passwd", "s3://other-bucket/x", "http://127.0.0.1/x", "x\x00y", "",
]


def test_data_cannot_address_files_outside_the_store(base_store: Path, tmp_path: Path) -> None:
    root = copy_store(base_store, tmp_path / "store")
    store = VectorStore(str(root))
    store.put_vector("lm", "2014", random_vector(store, 1))
    (tmp_path / "secret.txt").write_text("outside the store")
    around = sorted(p.name for p in tmp_path.iterdir())
    for rel in BAD_RELPATHS:
        for call in (lambda: store.write_bytes(rel, b"x"), lambda: store.read_bytes(rel),
                     lambda: store.exists_path(rel), lambda: store.ray_storage_path(rel)):
            with pytest.raises(StoreError, match="path"):
                call()
        if rel:
            with pytest.raises(StoreError, match="path"):
                store.list_paths(rel)
    for name in ("../cells", "/etc/x", "a/b", "..", "file:x", "x\\y"):
        for call in (lambda: store.read_table(name), lambda: store.has_table(name)):
            with pytest.raises(StoreError, match="table name"):
                call()
    for task in ("..", "../lm", "lm/..", "/lm", "lm\\..", "LM", "lm-x", "s3://x"):
        for call in (lambda: store.put_vector(task, "2014", random_vector(store, 1)), lambda: store.get_vector(task, "2014"),
                     lambda: store.delete_vector(task, "2014"), lambda: store.list_vectors(task)):
            with pytest.raises(StoreError, match="task"):
                call()
    # directories planted under vectors/ whose names are not a task and a period are ignored
    for planted in ("vectors/lm/..2014", "vectors/LM/2014", "vectors/lm/2014-13", "vectors/lm/%2e%2e"):
        (root / planted).mkdir(parents=True)
        (root / planted / "manifest.json").write_text("{}")
    assert store.list_vectors() == [("lm", "2014")] and store.verify() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == around
    assert (tmp_path / "secret.txt").read_text() == "outside the store"


def test_a_manifest_cannot_point_a_shard_outside_the_store(base_store: Path, tmp_path: Path) -> None:
    root = copy_store(base_store, tmp_path / "store")
    store = VectorStore(str(root))
    store.put_vector("lm", "2014", random_vector(store, 1))
    shard = root / "vectors/lm/2014/shard-00000.safetensors"
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    manifest = store.manifest("lm", "2014")
    manifest["shards"][0]["file"] = os.path.relpath(outside, shard.parent)  # ../../../../outside.safetensors
    store.write_bytes("vectors/lm/2014/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(StoreError, match=r"lm/2014"):
        store.get_vector("lm", "2014")
    assert store.verify() != []
