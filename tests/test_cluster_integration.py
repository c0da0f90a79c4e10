"""The cluster path end to end, as a user runs it (cluster/README.md):

1. a local Ray head node started by ``cluster/local.sh`` (``ray start --head``, auth disabled, its
   own temp dir and free ports, 2 CPUs);
2. a real S3 endpoint on loopback (SeaweedFS, the ``s3_server`` fixture of tests/s3_server.py);
3. ``ray job submit --working-dir . -- python -m timevec run timevec/demo/tiny.yaml
   --set store.url=s3://<bucket>/<prefix> --set store.storage_options.endpoint_url=<endpoint>``;
4. the results (vectors, cells.parquet, reports/index.html, Ray's own storage) read back from S3
   with the store API.

The S3 credentials reach the job only the way they reach a real cluster's processes: through the
environment of ``ray start`` (the head's processes and every job inherit it) -- never through the
config, ``--set``, or a runtime_env. The test checks that the secret appears nowhere Ray or the
store keeps things (job info, job logs, manifests, store.json).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.components import require_that
from timevec.distributed.local_cluster import group_alive, wait_for_job
from timevec.store.local_s3 import free_ports

REPO = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO / "cluster" / "local.sh"
CONFIG = "timevec/demo/tiny.yaml"  # the packaged tiny config: one source of truth, store set per job
JOB_TIMEOUT_S = 600
# What the job does not need (Ray also honours .gitignore and skips .git/.venv/__pycache__).
EXCLUDES = [".venv", "runs", ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.egg-info", "build", "dist"]


# ---------------------------------------------------------------- static checks of cluster/ and jobs/configs/


@pytest.mark.parametrize("name", ["t5-small-news", "t5-3b-news"])
def test_job_configs_validate(name: str) -> None:
    from timevec.config import load_config

    config = load_config(REPO / "jobs" / "configs" / f"{name}.yaml")
    assert not config.store.url.startswith(("./", "runs/")), "a job's relative store path would land in Ray's session dir"
    if name.startswith("t5-"):
        assert config.base.source == "hub" and config.granularities
        assert config.training.lr in (8e-4, 2e-4) and config.training.max_length == 128 and config.training.seed == 42
        assert config.training.batch_size * config.training.grad_accum == 16
        assert config.training.for_task("classification").epochs == 3 and config.training.epochs == 1
        assert config.ray.gpus_per_run > 0 and config.ray.gpus_per_eval_actor > 0
    if name == "t5-3b-news":
        assert config.ray.workers_per_run >= 2 and config.training.precision == "bf16"
        assert config.training.lora is not None and (config.training.lora.r, config.training.lora.alpha) == (8, 32)


def test_job_configs_have_one_source_of_truth() -> None:
    """The demo and tiny studies exist once (timevec/demo/); jobs name them and set the store per job."""
    from timevec.config import load_config

    configs = REPO / "jobs" / "configs"
    assert not (configs / "demo.yaml").exists() and not (configs / "tiny-s3.yaml").exists()
    docs = "\n".join(p.read_text() for p in [REPO / "cluster" / "README.md", REPO / "cluster" / "local.sh", REPO / "README.md"])
    assert "jobs/configs/demo.yaml" not in docs and "tiny-s3" not in docs
    config = load_config(
        REPO / CONFIG, ["store.url=s3://b/p", "store.storage_options.endpoint_url=http://127.0.0.1:9"]
    )
    assert config.store.url == "s3://b/p" and config.store.storage_options == {"endpoint_url": "http://127.0.0.1:9"}


def test_ray_up_yaml_passes_rays_schema() -> None:
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster" / "ray-up-gpu.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert workers and all("IamInstanceProfile" in t["node_config"] for t in types.values())
    assert all(t["max_workers"] >= t.get("min_workers", 0) for t in workers)
    text = (REPO / "cluster" / "ray-up-gpu.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text


def test_runtime_env_matches_the_project() -> None:
    import tomllib
    import yaml
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation
    assert not any(re.search(r"secret|password|access_key|(^|_)token$", k, re.I) for k in env.get("env_vars", {}))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["s3"] + project["optional-dependencies"]["plots"]
    have = {re.split(r"[<>=\[]", p)[0].lower() for p in env["pip"]["packages"]}
    missing = {re.split(r"[<>=\[]", d)[0].lower() for d in wanted} - have - {"ray"}
    assert not missing, f"cluster/runtime_env.yaml lacks {sorted(missing)}"
    assert "ray" not in have, "Ray itself must come from the cluster, not the runtime env"
    docs = list(yaml.safe_load_all((REPO / "cluster" / "kuberay-rayjob.yaml").read_text()))
    rayjob = next(d for d in docs if d["kind"] == "RayJob")
    job_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**job_env)
    assert job_env["pip"] == env["pip"] and job_env["env_vars"] == env["env_vars"]


def test_kuberay_manifests() -> None:
    import yaml

    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        docs = list(yaml.safe_load_all((REPO / "cluster" / name).read_text()))
        ray_docs = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
        assert len(ray_docs) == 1
        spec = ray_docs[0]["spec"]
        cluster = spec["rayClusterSpec"] if ray_docs[0]["kind"] == "RayJob" else spec
        assert cluster["rayVersion"] == "2.60.0"
        images = [c["image"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["maxReplicas"]
            containers = group["template"]["spec"]["containers"]
            images += [c["image"] for c in containers]
            assert all("nvidia.com/gpu" in c["resources"]["limits"] for c in containers)
        assert all(image.startswith("rayproject/ray:2.60.0") for image in images)
        assert "AWS_SECRET_ACCESS_KEY" not in (REPO / "cluster" / name).read_text()
        if ray_docs[0]["kind"] == "RayJob":
            entry = spec["entrypoint"].split()
            assert entry[:4] == ["python", "-m", "timevec", "run"]
            assert (REPO / entry[4]).is_file()


def test_local_sh_usage_errors() -> None:
    for args, message in [
        ([], "usage"),
        (["restart"], "unknown action"),
        (["start", "--port"], "needs a value"),
        (["start", "--port", "x"], "must be a number"),
        (["start", "--auth", "maybe"], "'disabled' or 'token'"),
        (["start", "--bogus"], "unknown option"),
    ]:
        done = subprocess.run(["bash", str(LOCAL_SH), *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    with tempfile.TemporaryDirectory(prefix="tvray-") as empty:
        done = subprocess.run(["bash", str(LOCAL_SH), "status", "--dir", empty], capture_output=True, text=True, timeout=30)
        assert done.returncode == 3 and "no head" in done.stdout
        done = subprocess.run(["bash", str(LOCAL_SH), "stop", "--dir", empty], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "nothing to stop" in done.stdout


# ---------------------------------------------------------------- the end-to-end job


@dataclass
class Head:
    address: str  # the dashboard / job-submission URL
    env: dict[str, str]
    state_dir: Path
    pid: int


def _local_sh(action: str, state_dir: Path, env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LOCAL_SH), action, "--dir", str(state_dir), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def ray_head(s3_server) -> Iterator[Head]:
    """A Ray head node of our own, started with the S3 credentials in its environment."""
    require_that(shutil.which("setsid") is not None, "setsid", "setsid (util-linux) is needed by cluster/local.sh")
    # Short path: Ray's Unix sockets live under the temp dir and must stay under ~107 bytes.
    state_dir = Path(tempfile.mkdtemp(prefix="tvray-", dir="/tmp"))
    env = os.environ.copy()  # holds AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of s3_server
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # `ray` and the jobs' `python`
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_DEDUP_LOGS"] = "0"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    port, dashboard_port = free_ports(2)
    started = _local_sh(
        "start", state_dir, env, "--port", str(port), "--dashboard-port", str(dashboard_port), "--num-cpus", "2"
    )
    pid_file = state_dir / "head.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else -1
    try:
        if started.returncode != 0:
            pytest.fail(f"cluster/local.sh start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
        assert f"http://127.0.0.1:{dashboard_port}" in started.stdout, started.stdout
        yield Head(address=f"http://127.0.0.1:{dashboard_port}", env=env, state_dir=state_dir, pid=pid)
    finally:
        stopped = _local_sh("stop", state_dir, env, timeout=120)
        leftover = pid > 0 and group_alive(pid)
        if leftover:  # never leave our processes behind, whatever local.sh did
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(state_dir, ignore_errors=True)
        assert stopped.returncode == 0, f"cluster/local.sh stop failed:\n{stopped.stdout}\n{stopped.stderr}"
        assert not leftover, "cluster/local.sh stop left processes of its head running"


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT_S + 300)
def test_pipeline_job_on_local_head_with_s3_store(ray_head: Head, s3_server) -> None:
    from ray.job_submission import JobSubmissionClient

    from timevec.config import load_config
    from timevec.store import VectorStore

    began = time.monotonic()
    store_url = s3_server.url(f"it-{uuid.uuid4().hex[:8]}")
    submission_id = f"timevec-it-{uuid.uuid4().hex[:8]}"
    submit = [
        str(Path(sys.executable).parent / "ray"),
        "job", "submit",
        "--address", ray_head.address,
        "--submission-id", submission_id,
        "--no-wait",
        "--working-dir", ".",
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
        "--",
        "python", "-m", "timevec", "run", CONFIG,
        "--set", f"store.url={store_url}",
        "--set", f"store.storage_options.endpoint_url={s3_server.endpoint_url}",
        # No interpolation or analogy (tests/test_adapt.py, tests/test_analogy.py): their actors read the S3
        # vectors through the same store calls as the evaluation's, Tune's storage on S3 is the fleet's,
        # and every stage here costs fresh worker processes on a 2-core CI machine.
        "--stages", "finetune,evaluate,analyze,report",
    ]  # fmt: skip
    submitted = subprocess.run(submit, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=180)
    assert submitted.returncode == 0, f"ray job submit failed:\n{submitted.stdout}\n{submitted.stderr}"

    client = JobSubmissionClient(ray_head.address)
    status = wait_for_job(client, submission_id, JOB_TIMEOUT_S, poll_s=3)
    logs = client.get_job_logs(submission_id)
    job_seconds = time.monotonic() - began
    assert status == "SUCCEEDED", f"job {submission_id} ended {status} after {job_seconds:.0f} s; log tail:\n{logs[-6000:]}"

    # The credentials stayed in the environment: not in Ray's job record, not in the job's output.
    secret = s3_server.secret_key
    info = client.get_job_info(submission_id)
    record = json.dumps({"entrypoint": info.entrypoint, "runtime_env": info.runtime_env, "metadata": info.metadata})
    assert secret not in record and s3_server.access_key not in record
    assert secret not in logs

    # Everything the study produced is in the S3 store, readable with the store API.
    store = VectorStore(store_url, s3_server.storage_options)
    assert store.exists(), f"no store.json at {store_url}"
    assert secret not in json.dumps(store.info())
    config = load_config(REPO / CONFIG)
    periods = config.period_list("year")
    vectors = store.list_vectors()
    assert sorted(vectors) == sorted((t, p) for t in config.tasks for p in periods), vectors
    for task, period in vectors:
        assert secret not in json.dumps(store.manifest(task, period))
    problems = store.verify()
    assert not problems, problems

    # The all-pairs matrix of every task: each (train vector, test period) cell, with its metric.
    cells = store.read_table("cells")
    for task in config.tasks:
        rows = cells[(cells["task"] == task) & (cells["granularity"] == "year") & (cells["vector"] != "base")]
        pairs = set(zip(rows["vector"], rows["test_period"]))
        wanted = {(f"{task}/{v}", t) for v in periods for t in periods}
        assert wanted <= pairs, f"missing {task} cells: {sorted(wanted - pairs)}"
        assert (rows["n_examples"] > 0).all()
        assert set(rows["metric"]) == ({"perplexity"} if task == "lm" else {"macro_f1"}), set(rows["metric"])

    # Reference values: the cells the cluster's actors computed equal an evaluation in this process
    # of the vectors as stored on S3 (θ_pre + τ on the stored test examples), the base's cell and an
    # off-diagonal one of every task; a wrong vector, split or metric in the job moves them.
    from timevec.data.examples import prepare_eval_sets
    from timevec.evaluate.cells import CellEvaluator

    config = load_config(REPO / CONFIG, [f"store.url={store_url}"])
    wanted = {(task, "year"): periods for task in config.tasks}
    splits = prepare_eval_sets(config, wanted, store=store)["test"]
    evaluator = CellEvaluator(config, store, splits, device="cpu")
    by_key = cells[cells["granularity"] == "year"].set_index(["task", "vector", "test_period"])["value"]
    first, last = periods[0], periods[-1]
    for task in config.tasks:
        local = {("base", r["test_period"]): r["value"] for r in evaluator.evaluate_base(task, "year", [last])}
        local |= {(r["vector"], r["test_period"]): r["value"] for r in evaluator.evaluate_vector((task, first), [last])}
        assert set(local) == {("base", last), (f"{task}/{first}", last)}, local
        for (vector, test), value in local.items():
            assert by_key[(task, vector, test)] == pytest.approx(value, rel=1e-5, abs=1e-7), (task, vector, test)
        if task == "lm":
            assert all(math.isfinite(v) and v > 1.0 for v in local.values()), local

    html = store.read_bytes("reports/index.html").decode("utf-8")
    assert "<html" in html.lower() and "</html>" in html.lower()
    assert "data:image/png;base64," in html, "the report embeds no figure"
    assert secret not in html

    paths = store.list_paths()
    for table in ("cells", "relative_change"):
        assert f"results/{table}.parquet" in paths, f"no results/{table}.parquet in the store"
    # Ray Train/Tune storage shares the root: <store>/ray (RunConfig(storage_path=...) on S3).
    assert any(p.startswith("ray/") for p in paths), "nothing under <store>/ray: Ray's storage is not on the store"
    stages = re.findall(r"stage (\w+): done in ([0-9.]+) s", logs)
    print(f"\ncluster integration: job {submission_id} SUCCEEDED in {job_seconds:.0f} s; {len(cells)} cells; "
          + ", ".join(f"{name} {sec} s" for name, sec in stages))
