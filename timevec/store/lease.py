"""A writer lease in the store: one driver at a time may run a writing stage on one store.

Why: two ``timevec finetune CONFIG`` started on one config would both train every missing run
and both write each vector. Shards have fixed names (``shard-NNNNN.safetensors``, the shard plan),
so two writers of one key interleave: A's manifest could be published over B's shard bytes
(a sha256 mismatch: a corrupt vector), a writer cleaning up the other's temporary files makes
its publish fail, and the base would be written twice. Rather than changing how shards are named
(every reader and the Gram depend on the plan), the stage takes a LEASE first: a small JSON
object ``<root>/leases/<name>.json`` that is created or replaced only by compare-and-swap, so at
most one live holder exists. The loser gets :class:`LeaseHeld` (a :class:`StoreError`, exit
status 2) naming the holder: host, pid, command, since when, last renewal.

Compare-and-swap, per backend (ARCHITECTURE §3, "One writer per stage"):

- **S3** (and any server that honours conditional writes): create with ``If-None-Match: *``,
  replace with ``If-Match: <ETag read>``; the server refuses a write whose condition no longer
  holds (HTTP 412). SeaweedFS 4.48 honours both, also under 8 concurrent writers
  (``tests/test_faults.py``); AWS S3 since 2024. A refused write is re-read before it is called
  lost, so a retried PUT that had in fact succeeded is recognised by its nonce.
- **A local folder**: the read-compare-write is serialised by ``fcntl.flock`` on a sidecar
  ``<name>.json.lock``, and the record is published by rename (atomic).

Expiry: the holder renews the lease every ``ttl / 3`` seconds from a daemon thread (a CAS on its
own last ETag or nonce). A lease whose ``renewed`` time is more than ``ttl`` seconds old (a killed
driver), that was released, or whose holder ran on THIS host under a pid that no longer exists (a
driver killed here and re-run at once need not wait out the ttl; hosts sharing one hostname across
pid namespaces would defeat this) is taken over by the next driver — by the same CAS, so of two
drivers that find it stale exactly one wins. Staleness is judged on the wall clock, so hosts
sharing a store need synchronised clocks (NTP); ``ttl`` must exceed any pause of the holder
(default 120 s, ``store.lease_seconds``). A holder whose renewal fails (its lease was taken over)
records it in :attr:`StoreLease.lost`; the stage then reports it instead of claiming success.

Fencing (:class:`Fence`, :meth:`VectorStore.fenced <timevec.store.VectorStore.fenced>`): the stage
runs on a store whose every write and delete first re-reads the lease and goes ahead only while
it still names this driver's holder id, unreleased and renewed within its ttl — in the driver and
in every Ray trial or actor the store is shipped to. So a holder that stalled past its ttl and
wakes after a takeover gets :class:`LeaseLost` on its next file instead of writing over the new
holder's shards. What is left is the gap between that read and the write it guards (one small
GET, milliseconds; an object store offers no conditional write across two keys): a stall inside
it can still let one late shard through, which the manifest's checksums then expose as corrupt
(``timevec store verify``) — never a silently wrong vector. Ray's own checkpoint files are not
written through the store and are not fenced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from timevec.store.errors import StoreError
from timevec.store.fs import TMP_MARK, StoreFiles, safe_url

log = logging.getLogger(__name__)

__all__ = ["Fence", "LeaseHeld", "LeaseLost", "StoreLease"]


class LeaseHeld(StoreError):
    """Another live driver holds the lease: the message names it and says how it expires."""


class LeaseLost(StoreError):
    """A write through a fenced store after its lease was taken over, released or let expire."""


def _precondition_failed(exc: BaseException) -> bool:
    """Whether an S3 error is a refused conditional write (412, or AWS's 409 conflict)."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__ or exc
    response = getattr(cause, "response", None) or {}
    code = (response.get("Error") or {}).get("Code", "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _alive(pid: Any) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal still exists)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


class Fence:
    """Writes allowed only while lease ``name`` names ``holder`` (see the module docstring).

    A small picklable value: a fenced store carries it to Ray workers, which check the lease
    object themselves (they hold no lease of their own).
    """

    __slots__ = ("holder", "name", "store_label", "what")

    def __init__(self, name: str, holder: str, store_label: str, what: str) -> None:
        self.name, self.holder, self.store_label, self.what = name, holder, store_label, what

    def __reduce__(self) -> tuple[Any, ...]:
        return (Fence, (self.name, self.holder, self.store_label, self.what))

    def check(self, files: StoreFiles, path: str) -> None:
        """Raise :class:`LeaseLost` unless the lease is still ours; ``path`` is what is about to be written."""
        reader = StoreLease(files, self.store_label, self.name, 1.0, self.what)
        current = reader._read()
        record = current[0] if current is not None else None
        if record is not None and record.get("holder") == self.holder and not reader.stale(record):
            return
        if record is None:
            state = "it no longer exists"
        elif record.get("holder") != self.holder:
            state = f"it was taken over by {reader._describe(record)}"
        elif record.get("released"):
            state = "it was released"
        else:
            state = (f"it expired: last renewed {time.time() - float(record.get('renewed', 0)):.0f} s ago, "
                     f"ttl {float(record.get('ttl_s', 0)):.0f} s (store.lease_seconds)")
        raise LeaseLost(
            f"store {safe_url(self.store_label)}: {self.what} refused to write {files.rel(path)}: its lease "
            f"{files.rel(reader.path)} is no longer held by this driver ({state}); nothing more is written — "
            f"check the store with `timevec store verify` and re-run"
        )


class StoreLease:
    """The lease ``name`` of the store under ``files``; a context manager that holds and renews it.

    ``what`` is the stage, for messages (``"the finetune stage"``).
    """

    def __init__(self, files: StoreFiles, store_label: str, name: str, ttl_s: float, what: str) -> None:
        if ttl_s <= 0:
            raise StoreError(f"lease {name}: ttl must be positive, got {ttl_s}")
        self.files = files
        self.store_label = store_label
        self.name = name
        self.ttl_s = float(ttl_s)
        self.what = what
        self.path = files.path("leases", f"{name}.json")
        self.holder = uuid.uuid4().hex
        self.token: str | None = None  # S3: the ETag of our last write; local: our last nonce
        self.record: dict[str, Any] | None = None
        self.took_over: dict[str, Any] | None = None  # the stale record we replaced, if any
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the record

    def _new_record(self, acquired: float | None = None, released: bool = False) -> dict[str, Any]:
        t = time.time()
        return {
            "lease": self.name,
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
            "acquired": acquired if acquired is not None else t,
            "renewed": t,
            "ttl_s": self.ttl_s,
            "released": released,
            "nonce": uuid.uuid4().hex,
        }

    def stale(self, record: dict[str, Any], now: float | None = None) -> bool:
        """Released, not renewed within its own ``ttl_s``, or held by a process of this host that is gone."""
        now = time.time() if now is None else now
        if record.get("released") or now - float(record.get("renewed", 0)) > float(record.get("ttl_s", 0)):
            return True
        return record.get("host") == socket.gethostname() and not _alive(record.get("pid"))

    # ------------------------------------------------------------------ compare-and-swap, per backend

    def _read(self) -> tuple[dict[str, Any], str] | None:
        """(record, token) or None when there is no lease object."""
        if self.files.local:
            try:
                with open(self.path, "rb") as f:
                    record = json.loads(f.read())
            except FileNotFoundError:
                return None
            return record, str(record.get("nonce"))
        # The body and its ETag from ONE GET. s3fs's public API gives them only as a HEAD and then a GET
        # that it checks against the HEAD's ETag (fs.open): 2.1x slower (bench/s3_api.py), for a call
        # made on every acquire and every refused renewal. A read has no condition that an s3fs change
        # could drop silently (the writes below, which do, use the public pipe_file); without
        # _call_s3 the public path is taken.
        fs = self.files.fs
        try:
            if not hasattr(fs, "_call_s3"):
                with fs.open(self.path, "rb", cache_type="none") as f:
                    return json.loads(f.read()), f.details["ETag"]
            from fsspec.asyn import sync

            bucket, key = self.path.split("/", 1)

            async def get() -> tuple[bytes, str]:
                resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
                async with resp["Body"] as body:
                    return await body.read(), resp["ETag"]

            data, etag = sync(fs.loop, get)
        except FileNotFoundError:
            return None
        return json.loads(data), etag

    def _swap(self, record: dict[str, Any], expected: str | None) -> bool:
        """Write ``record`` if the lease object is absent (``expected`` None) or still ``expected``."""
        data = json.dumps(record, indent=2).encode()
        if self.files.local:
            import fcntl

            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + ".lock", "a+b") as guard:
                fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
                current = self._read()
                if (current[1] if current else None) != expected:
                    return False
                tmp = f"{os.path.dirname(self.path)}/.{os.path.basename(self.path)}{TMP_MARK}{uuid.uuid4().hex}"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.path)
            self.token = record["nonce"]
            return True
        # s3fs's public pipe_file: mode="create" sends IfNoneMatch: *, and extra keywords (IfMatch)
        # go to the PUT; it returns the PUT's response, whose ETag is the lease's next token.
        condition: dict[str, Any] = {"mode": "create"} if expected is None else {"IfMatch": expected}
        try:
            self.token = self.files.fs.pipe_file(self.path, data, **condition)["ETag"]
            return True
        except OSError as exc:
            if not _precondition_failed(exc):
                raise
        current = self._read()  # a retried PUT whose first try landed is ours after all
        if current is not None and current[0].get("nonce") == record["nonce"]:
            self.token = current[1]
            return True
        return False

    # ------------------------------------------------------------------ acquire, renew, release

    def acquire(self) -> StoreLease:
        """Take the lease, or raise :class:`LeaseHeld` naming the live holder."""
        for _ in range(3):  # a lost race is re-read once or twice: the winner is then live
            current = self._read()
            record = self._new_record()
            if current is None:
                if self._swap(record, None):
                    break
                continue
            old, token = current
            if not self.stale(old):
                raise LeaseHeld(self._held_message(old))
            if self._swap(record, token):
                if not old.get("released"):
                    self.took_over = old
                    log.warning("took over the expired lease of %s", self._describe(old))
                break
        else:
            current = self._read()
            raise LeaseHeld(self._held_message(current[0] if current else {}))
        self.record = record
        log.info("%s holds lease %s of %s", self.what, self.name, self.store_label)
        return self

    def renew(self) -> bool:
        """Extend our lease (CAS on our own last write); False (and :attr:`lost`) when it was taken."""
        if self.record is None or self.lost:
            return False
        record = self._new_record(acquired=self.record["acquired"])
        try:
            ok = self._swap(record, self.token)
        except OSError as exc:  # a network error: try again next beat, the ttl has room for it
            log.warning("lease %s: renewal failed (%s); retrying", self.name, exc)
            return True
        if not ok:
            current = self._read()
            self.lost = (
                f"lease {self.name} of {self.store_label} was taken over by "
                f"{self._describe(current[0]) if current else 'nobody (deleted)'} while {self.what} ran"
            )
            log.error("%s", self.lost)
            return False
        self.record = record
        return True

    def release(self) -> None:
        """Mark the lease released (a CAS: a lease taken over by another driver is left alone)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
            self._thread = None
        if self.record is None or self.lost:
            return
        with contextlib.suppress(OSError):
            self._swap(self._new_record(acquired=self.record["acquired"], released=True), self.token)
        self.record = None

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self.renew():
                return

    def __enter__(self) -> StoreLease:
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"timevec-lease-{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def fence(self) -> Fence:
        """What a store's writes check while this lease is meant to be held (:class:`Fence`)."""
        return Fence(self.name, self.holder, self.store_label, self.what)

    # ------------------------------------------------------------------ messages

    @staticmethod
    def _describe(record: dict[str, Any]) -> str:
        return f"host {record.get('host', '?')} pid {record.get('pid', '?')} ({record.get('command', '?')!r})"

    def _held_message(self, record: dict[str, Any]) -> str:
        now = time.time()
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(record.get("acquired", now))))
        ago = now - float(record.get("renewed", now))
        ttl = float(record.get("ttl_s", self.ttl_s))
        return (
            f"store {safe_url(self.store_label)}: {self.what} is already running from another driver, "
            f"{self._describe(record)}, since {since} (lease {self.files.rel(self.path)}, renewed {ago:.0f} s ago). "
            f"Wait for it to finish and re-run (complete vectors are skipped), or stop it: a stopped driver's "
            f"lease expires {ttl:.0f} s after its last renewal and is then taken over (store.lease_seconds)"
        )
