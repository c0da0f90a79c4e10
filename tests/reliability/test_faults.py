"""Faults survived: a driver SIGKILLed mid-fleet and mid-evaluation, the S3 server stopped during
writes and restarted, the disk filling up mid-write.

After each fault: finished work is not redone (manifests' ``created`` and shard bytes unchanged,
cells not recomputed), no duplicate rows, and nothing half-written is visible
(``store.verify() == []``, unfinished vectors absent). A killed training worker is covered by
``tests/test_fleet.py::test_a_killed_trial_resumes_from_its_checkpoint``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.components import require
from tests.reliability import (
    copy_store,
    driver_env,
    kill_when,
    populated_store,
    run_cli,
    write_config,
)
from timevec.store import StoreError, VectorStore
from timevec.store.layout import shard_file
from timevec.store.local_s3 import S3Server, S3ServerUnavailable, _wait_ready, start_s3_server
from timevec.weights.vectors import TimeVector

PERIODS = ["2014", "2015"]
# the fleet test needs one more: Ray may let the run in flight finish before it ends the dead
# driver's trial process, and "some but not all" must still hold then
FLEET_PERIODS = ["2014", "2015", "2016"]
CELL_KEY = ["task", "granularity", "vector", "test_period"]

# A small synthetic "model" for store-level faults (4 shards at TARGET bytes per shard).
SHAPES = {"embed": (40, 16), "attn": (16, 48), "mlp": (16, 32), "norm": (16,)}
TARGET = 2048


def _tensors(seed: int, scale: float = 1.0, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=g) for n, s in shapes.items()}


def _vec(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> TimeVector:
    return TimeVector(_tensors(seed, 0.01, shapes))


def _vector_files(root: Path, period: str) -> dict[str, bytes]:
    directory = root / "vectors" / "lm" / period
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _tmp_leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------------------- the driver killed


def _unfinished_checkpoints(storage: Path, store: VectorStore) -> dict[str, int]:
    """period → newest checkpointed step, for the runs that have checkpoints but no vector yet."""
    finished = {p for _t, p in store.list_vectors()}
    out: dict[str, int] = {}
    for meta in storage.glob("lm_*_*/checkpoint_*/meta.json"):
        period = meta.parent.parent.name.split("_")[1]
        if period in finished:
            continue
        try:
            out[period] = max(out.get(period, 0), json.loads(meta.read_text())["step"])
        except (OSError, ValueError, KeyError):
            continue  # being written right now
    return out


@pytest.mark.slow
def test_driver_killed_mid_fleet_then_rerun_skips_finished_runs(
    ray_session: str, base_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`timevec finetune` SIGKILLed once a vector exists and a later run is part-way (has a checkpoint):
    the re-run trains only the rest, and the part-way run continues from its checkpoint, not from step 0."""
    from timevec.config import load_config
    from timevec.distributed.fleet import experiment_name

    root = copy_store(base_store, tmp_path / "store")
    config = write_config(tmp_path / "fleet.yaml", root, "periods.start='2014'", "periods.end='2016'",
                          "training.steps=200", "training.checkpoint_every=10", "ray.max_concurrent_runs=1")  # fmt: skip
    store = VectorStore(str(root))
    storage = Path(store.ray_storage_path()) / experiment_name(load_config(config))
    log_path = tmp_path / "driver.log"
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "timevec.cli", "finetune", str(config)],
            cwd=tmp_path, env=driver_env(ray_session), stdout=log, stderr=subprocess.STDOUT,
        )
    kill_when(driver, lambda: bool(store.list_vectors() and _unfinished_checkpoints(storage, store)),
              "a stored vector and a later run's checkpoint", log_path=log_path)  # fmt: skip
    time.sleep(3)  # Ray ends the dead driver's trial processes; let a write in flight land or die

    before = {p: store.manifest(t, p)["created"] for t, p in store.list_vectors()}
    part_way = _unfinished_checkpoints(storage, store)
    assert 1 <= len(before) < len(FLEET_PERIODS) and part_way, f"not interrupted mid-fleet: {sorted(before)}, {part_way}"
    files_before = {p: _vector_files(root, p) for p in before}
    # Nothing half-written is visible: every listed vector verifies, the others are simply absent.
    assert store.verify() == []
    for period in FLEET_PERIODS:
        if period not in before:
            assert not store.has_vector("lm", period)
            with pytest.raises(StoreError, match=f"lm/{period} not found"):
                store.get_vector("lm", period)
    assert not any(".tmp-" in p for p in store.list_paths(""))

    code, out, err = run_cli(capsys, "finetune", config)
    assert code == 0, out[-2000:] + err[-2000:]
    assert "skipped" in out and "done" in out
    assert store.list_vectors() == [("lm", p) for p in FLEET_PERIODS]
    assert {p: store.manifest("lm", p)["created"] for p in before} == before  # not retrained
    assert {p: _vector_files(root, p) for p in before} == files_before  # not rewritten
    assert store.verify() == []
    assert _tmp_leftovers(root / "vectors") == []  # a killed writer's temporary files are cleaned up
    for period in part_way:  # continued from the killed driver's checkpoint
        assert store.manifest("lm", period)["run"]["metrics"]["resumed_from_step"] > 0, period


DRIVER = textwrap.dedent(
    """
    import sys, time
    import timevec.distributed.cells as cells
    from timevec.cli import main
    from timevec.store import VectorStore

    marker, config = sys.argv[1], sys.argv[2]
    # Test-side instrumentation only: flush after every finished vector (the default is 256 rows,
    # i.e. one flush at the end for a tiny study), then hold after the first flush until killed.
    cells.run_cells.__kwdefaults__["flush_rows"] = 1
    append = VectorStore.append_table

    def append_then_hold(self, name, data, **kwargs):
        append(self, name, data, **kwargs)
        open(marker, "w").close()
        time.sleep(600)

    VectorStore.append_table = append_then_hold
    sys.exit(main(["evaluate", config]))
    """
)


@pytest.mark.slow
def test_driver_killed_mid_evaluation_then_rerun_computes_only_missing_cells(
    ray_session: str, base_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`timevec evaluate` SIGKILLed after its first rows are stored; the re-run adds only the rest."""
    root = tmp_path / "store"
    store = populated_store(base_store, root, PERIODS, first_seed=10)
    config = write_config(tmp_path / "eval.yaml", root, "periods.start='2014'", "periods.end='2015'")
    marker = tmp_path / "first-flush"
    log_path = tmp_path / "driver.log"
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(marker), str(config)],
            cwd=tmp_path, env=driver_env(ray_session), stdout=log, stderr=subprocess.STDOUT,
        )
    kill_when(driver, marker.exists, "stored cells", log_path=log_path)

    total = (len(PERIODS) + 1) * len(PERIODS)  # every vector and the base × every test period
    first = pd.read_parquet(root / "results" / "cells.parquet")
    assert 0 < len(first) < total, len(first)
    assert not first.duplicated(CELL_KEY).any()

    code, out, err = run_cli(capsys, "evaluate", config)
    assert code == 0, out[-2000:] + err[-2000:]
    cells = pd.read_parquet(root / "results" / "cells.parquet")  # the raw table: every row ever appended
    assert len(cells) == total and not cells.duplicated(CELL_KEY).any(), cells.to_string()
    merged = first.merge(cells, on=CELL_KEY, suffixes=("_before", "_after"))
    assert len(merged) == len(first)
    # stored cells were not recomputed: their timing (and value) is the first run's, bit for bit
    assert (merged["seconds_before"] == merged["seconds_after"]).all()
    assert (merged["value_before"] == merged["value_after"]).all()
    assert store.verify() == []


# ---------------------------------------------------------------------------- S3 server down


def _kill(server: S3Server) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


def _restart(server: S3Server) -> S3Server:
    """The same server again: same command line (ports, data directory), same keys."""
    with open(server.log_path, "ab") as log:
        process = subprocess.Popen(
            server.process.args, cwd=server.data_dir, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy(),
        )
    again = S3Server(
        endpoint_url=server.endpoint_url, bucket=server.bucket, process=process, data_dir=server.data_dir,
        log_path=server.log_path, access_key=server.access_key, secret_key=server.secret_key,
        _saved_env=server._saved_env,
    )
    server._saved_env = {}
    _wait_ready(again, 60)
    return again


def _assert_clear_connection_error(exc: BaseException, server: S3Server) -> None:
    """StoreError, or the S3 client's own error that names the endpoint it could not reach."""
    endpoint = server.endpoint_url.removeprefix("http://")
    assert isinstance(exc, StoreError) or endpoint in str(exc), f"unclear error: {type(exc).__name__}: {exc}"


def test_s3_server_stopped_during_writes_and_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        server = start_s3_server(tmp_path / "s3")
    except (S3ServerUnavailable, ImportError, OSError) as exc:
        require("s3", f"no local S3 server: {exc}")
    current = server
    try:
        url = server.url(f"rel-{uuid.uuid4().hex[:8]}")
        store = VectorStore(url, server.storage_options)
        store.init("tiny-base", _tensors(0), target_shard_bytes=TARGET)
        assert store.num_shards >= 3
        store.put_vector("lm", "2014", _vec(1))

        # 1. the server dies while a vector is being written (after its first shard)
        write = store._write
        killed = threading.Event()

        def write_then_kill(path: str, data) -> None:
            write(path, data)
            if path.endswith("shard-00000.safetensors") and not killed.is_set():
                killed.set()
                _kill(server)

        monkeypatch.setattr(store, "_write", write_then_kill)
        began = time.monotonic()
        with pytest.raises(Exception) as err:
            store.put_vector("lm", "2015", _vec(2))
        assert killed.is_set()
        _assert_clear_connection_error(err.value, server)
        monkeypatch.undo()

        # 2. a put while the server is down fails too (and does not hang)
        with pytest.raises(Exception) as err:
            store.put_vector("lm", "2016", _vec(3))
        _assert_clear_connection_error(err.value, server)
        assert time.monotonic() - began < 120, "writes against a dead endpoint took minutes to fail"

        # 3. restarted: no corrupt vector was published; the old one is intact; a put succeeds
        current = _restart(server)
        fresh = VectorStore(url, server.storage_options)
        assert fresh.list_vectors() == [("lm", "2014")]
        assert not fresh.has_vector("lm", "2015") and not fresh.has_vector("lm", "2016")
        assert fresh.get_vector("lm", "2014").equal(_vec(1))
        assert fresh.verify() == []
        fresh.put_vector("lm", "2015", _vec(2))
        assert fresh.get_vector("lm", "2015").equal(_vec(2))
        assert fresh.list_vectors() == [("lm", "2014"), ("lm", "2015")] and fresh.verify() == []
    finally:
        current.stop()
        server.stop()


# ---------------------------------------------------------------------------- disk full


@contextlib.contextmanager
def _tmpfs(mount_point: Path, size: str):
    """A tmpfs of ``size`` mounted at ``mount_point`` (root only); skipped where mounting is not allowed."""
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        require("tmpfs", f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 256 KiB tmpfs mounted under tmp_path."""
    with _tmpfs(tmp_path / "tiny-disk", "256k") as mount_point:
        yield mount_point


def _fill(directory: Path, leave_bytes: int) -> Path:
    """Fill the file system of ``directory`` until about ``leave_bytes`` are free."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    filler = directory / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def test_disk_full_on_a_real_tiny_filesystem(tiny_disk: Path) -> None:
    """ENOSPC half-way through a vector: a clear error, no visible vector, earlier vectors intact."""
    store = VectorStore(str(tiny_disk / "store"))
    store.init("tiny-base", _tensors(0), target_shard_bytes=TARGET)
    store.put_vector("lm", "2014", _vec(1))
    filler = _fill(tiny_disk, leave_bytes=2 * 4096)  # room for about one shard, not four

    with pytest.raises((OSError, StoreError)) as err:
        store.put_vector("lm", "2015", _vec(2))
    assert isinstance(err.value, StoreError) or err.value.errno == errno.ENOSPC, repr(err.value)
    assert "No space left" in str(err.value) or "ENOSPC" in str(err.value) or "space" in str(err.value).lower()
    assert not store.has_vector("lm", "2015") and store.list_vectors() == [("lm", "2014")]
    assert store.get_vector("lm", "2014").equal(_vec(1)) and store.verify() == []
    assert _tmp_leftovers(tiny_disk / "store") == []  # temporary files are removed on failure

    # An overwrite on the full disk (it may fit: each shard replaces one of the same size) leaves
    # the old vector, the new one or none, never a hybrid.
    try:
        store.put_vector("lm", "2014", _vec(3))
        overwritten = True
    except (OSError, StoreError):
        overwritten = False
    assert store.verify() == []
    if store.has_vector("lm", "2014"):
        assert store.get_vector("lm", "2014").equal(_vec(3) if overwritten else _vec(1))
    else:
        assert not overwritten

    filler.unlink()  # space again: the same put now succeeds
    store.put_vector("lm", "2015", _vec(2))
    assert store.get_vector("lm", "2015").equal(_vec(2)) and store.verify() == []


def _objects_under(server: S3Server, url: str) -> dict[str, bytes]:
    """What the server holds under ``url``: name relative to it → bytes, read by a fresh S3 client (no caches)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=server.endpoint_url, skip_instance_cache=True, use_listings_cache=False)
    root = url.removeprefix("s3://").rstrip("/")
    return {p.removeprefix(f"{root}/"): fs.cat_file(p) for p in fs.find(root) if not p.endswith("/")}


def test_disk_full_under_a_real_s3_server(tmp_path: Path) -> None:
    """The object-store side: SeaweedFS with its data on a 32 MiB tmpfs that is then filled, so the
    server itself runs out of disk mid-vector and answers with an error (SeaweedFS: HTTP 500, "internal
    error"). Part of the vector reached the server before the failure (whole shards of it, listed and
    read back from the server itself), the put fails naming the object it could not write, nothing of
    the vector is visible, the vector already stored reads back intact, and once there is room again
    the same put succeeds."""
    with _tmpfs(tmp_path / "s3-disk", "32m") as disk:
        try:
            server = start_s3_server(disk)
        except (S3ServerUnavailable, ImportError, OSError) as exc:
            require("s3", f"no local S3 server: {exc}")
        try:
            url = server.url(f"full-{uuid.uuid4().hex[:8]}")
            store = VectorStore(url, server.storage_options)
            big: dict[str, tuple[int, ...]] = {f"w{i}": (256, 1024) for i in range(4)}  # 4 MiB a vector, 1 MiB a shard
            vector = {"2014": _vec(1, big), "2015": _vec(2, big)}
            store.init("tiny-base", _tensors(0, shapes=big), target_shard_bytes=2**20)
            assert store.num_shards == 4
            store.put_vector("lm", "2014", vector["2014"])
            filler = _fill(disk, leave_bytes=5 * 2**19)  # room for two of the four shards, not three

            with pytest.raises(OSError) as err:
                store.put_vector("lm", "2015", vector["2015"])
            message = str(err.value)
            print(f"disk full under S3: {type(err.value).__name__}: {message}")
            assert f"{url}/vectors/lm/2015/" in message and "was not written" in message, message
            # what the server holds of the vector at the failure (the store removes nothing on an error)
            reached = _objects_under(server, f"{url}/vectors/lm/2015")
            print(f"on the server after the failure: {sorted(reached)}")
            assert 1 <= len(reached) < store.num_shards, sorted(reached)  # some shards, not all, no manifest
            assert all(name.startswith("shard-") for name in reached) and not any(name in message for name in reached)
            fresh = VectorStore(url, server.storage_options)
            assert fresh.list_vectors() == [("lm", "2014")] and not fresh.has_vector("lm", "2015")
            assert fresh.get_vector("lm", "2014").equal(vector["2014"]) and fresh.verify() == []

            filler.unlink()  # room again: the same put succeeds, over the shards the first left
            store.put_vector("lm", "2015", vector["2015"])
            assert fresh.get_vector("lm", "2015").equal(vector["2015"])
            assert fresh.list_vectors() == [("lm", "2014"), ("lm", "2015")] and fresh.verify() == []
            # those were whole shards of this vector: the bytes the successful put stores under their names
            final = _objects_under(server, f"{url}/vectors/lm/2015")
            assert set(final) == {shard_file(k) for k in range(4)} | {"manifest.json"}
            assert all(data == final[name] for name, data in reached.items())
        finally:
            server.stop()


def test_enospc_from_an_fsspec_filesystem_mid_vector(tmp_path: Path) -> None:
    """The same through the store's fsspec path (not an object store: an in-memory fsspec filesystem whose
    writes raise ENOSPC once a byte budget is spent): a clear error mid-vector, nothing published, and a
    results table refused the same way."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class FullMemoryFileSystem(MemoryFileSystem):
        protocol = ("fullmem",)
        store: dict = {}
        pseudo_dirs = [""]
        budget: int | None = None  # bytes that may still be written; None: unlimited

        def pipe_file(self, path, value, *args, **kwargs):
            cls = type(self)
            if cls.budget is not None:
                if len(value) > cls.budget:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
                cls.budget -= len(value)
            return super().pipe_file(path, value, *args, **kwargs)

    fsspec.register_implementation("fullmem", FullMemoryFileSystem, clobber=True)
    store = VectorStore(f"fullmem://rel-{uuid.uuid4().hex[:8]}", io_threads=1)
    store.init("tiny-base", _tensors(0), target_shard_bytes=TARGET)
    store.put_vector("lm", "2014", _vec(1))
    shard = store.manifest("lm", "2014")["shards"][0]["bytes"]
    FullMemoryFileSystem.budget = shard + 100  # one shard fits, the second does not
    try:
        with pytest.raises((OSError, StoreError)) as err:
            store.put_vector("lm", "2015", _vec(2))
        assert isinstance(err.value, StoreError) or err.value.errno == errno.ENOSPC
        assert "space" in str(err.value).lower()
        assert any(p.startswith("vectors/lm/2015/shard-") for p in store.list_paths(""))  # it failed mid-vector
        assert not store.has_vector("lm", "2015") and store.list_vectors() == [("lm", "2014")]
        assert store.get_vector("lm", "2014").equal(_vec(1)) and store.verify() == []
        with pytest.raises((OSError, StoreError)):
            store.write_table("cells", pd.DataFrame({"value": range(10_000)}))
        assert not store.has_table("cells")
    finally:
        FullMemoryFileSystem.budget = None
    store.put_vector("lm", "2015", _vec(2))
    assert store.list_vectors() == [("lm", "2014"), ("lm", "2015")] and store.verify() == []
