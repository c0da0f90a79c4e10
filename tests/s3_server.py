"""The tests' S3 server: the session fixture ``s3_server`` (imported by ``tests/conftest.py``).

The server itself is :mod:`timevec.store.local_s3` (SeaweedFS ``weed mini`` on loopback, shared
with the benchmarks). Here only the test-side rule: when the ``weed`` binary is missing or does
not start (or s3fs is not installed), the tests using the fixture skip with the reason, or fail
under ``TIMEVEC_REQUIRE_COMPONENTS=1`` (``tests/components.py``, component ``s3``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.components import require
from timevec.store.local_s3 import S3Server, S3ServerUnavailable, start_s3_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 endpoint for the whole test session (component ``s3``: skips or fails when it cannot start)."""
    try:
        server = start_s3_server(tmp_path_factory.mktemp("s3"))
    except (S3ServerUnavailable, ImportError, OSError) as exc:
        require("s3", f"no local S3 server: {exc}")
    try:
        yield server
    finally:
        server.stop()
