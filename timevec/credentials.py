"""The one credential policy of timevec: what counts as a credential, and what to do with one.

Credentials come only from the standard AWS chain (environment, profile, instance role), never
from a config or a store option: a config is logged, stored in manifests and shipped to workers.
So there are two rules, both defined here and nowhere else:

- **Refuse** (:func:`refuse_credentials`, :func:`credential_keys`): an fsspec ``storage_options``
  mapping — in a config (``corpus``, ``store``) or given to :class:`timevec.store.VectorStore` —
  may not hold a key matching :data:`CREDENTIAL_KEY_RE`, at any depth (``client_kwargs`` …).
  Options have few, known keys (``endpoint_url``, ``client_kwargs``, ``anon``, …), so the rule is
  broad: the union of what the config and the store refused before they shared it.
- **Scrub** (:func:`scrub_credentials`): what the store writes (a vector manifest's ``run``
  record) gets the value of every key named in :data:`CREDENTIAL_NAMES`, and every string that
  contains the value of one of :data:`CREDENTIAL_ENV`, replaced by ``"<redacted>"``. Here keys
  are matched by exact name, not by the broad pattern: a run record holds a whole config and its
  metrics, whose legitimate keys (``tokens``, ``tokens_per_second``, ``summary_max_new_tokens``,
  ``key_column``) the pattern would match. Every name in :data:`CREDENTIAL_NAMES` is also refused
  by :data:`CREDENTIAL_KEY_RE`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "CREDENTIAL_ENV",
    "CREDENTIAL_KEY_RE",
    "CREDENTIAL_NAMES",
    "REDACTED",
    "credential_keys",
    "environment_secrets",
    "is_credential_key",
    "refuse_credentials",
    "scrub_credentials",
]

#: A ``storage_options`` key (at any depth) that is, or may be, a credential (case-insensitive search).
CREDENTIAL_KEY_RE = re.compile(
    r"secret|token|password|passwd|credential|(^|_)key(_id)?$|^key|access_key", re.IGNORECASE
)
#: Keys (lower-cased, exact) whose values are never written.
CREDENTIAL_NAMES = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "api_key",
        "access_key",
        "secret_key",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "hf_token",
    }
)
#: Environment variables holding credentials: their values never appear in anything written.
CREDENTIAL_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "HF_TOKEN")
REDACTED = "<redacted>"


def is_credential_key(key: Any) -> bool:
    """Whether an options key looks like a credential (:data:`CREDENTIAL_KEY_RE`)."""
    return bool(CREDENTIAL_KEY_RE.search(str(key)))


def credential_keys(options: Mapping[str, Any], where: str = "storage_options") -> Iterator[str]:
    """The dotted paths (``where.key.sub``) of credential-like keys in ``options``, at any depth,
    depth first in the mapping's order."""
    for key, value in options.items():
        if is_credential_key(key):
            yield f"{where}.{key}"
        elif isinstance(value, Mapping):
            yield from credential_keys(value, f"{where}.{key}")


def refuse_credentials(options: dict[str, Any], where: str = "storage_options") -> dict[str, Any]:
    """Refuse credential-like keys at any depth: credentials come from the AWS chain (env, profile,
    IAM role), so a config — which is logged, stored in manifests and shipped to workers — never
    carries one. Returns ``options`` (a pydantic validator); raises :class:`ValueError`."""
    for path in credential_keys(options, where):
        raise ValueError(f"{path}: credentials come from the standard AWS chain, never from configs")
    return options


def environment_secrets() -> list[str]:
    """The current values of :data:`CREDENTIAL_ENV` ('' where unset)."""
    return [os.environ.get(v, "") for v in CREDENTIAL_ENV]


def scrub_credentials(
    obj: Any,
    secrets: Sequence[str],
    path: str = "run",
    *,
    what: str = "manifest",
    log: logging.Logger = logger,
) -> Any:
    """A copy of ``obj`` with credential keys (:data:`CREDENTIAL_NAMES`) and values containing one
    of ``secrets`` replaced by ``"<redacted>"``: nothing secret is written. Each replacement is
    logged (on ``log``, prefixed ``what``) by its path, never with the value."""
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if isinstance(key, str) and key.lower() in CREDENTIAL_NAMES:
                log.warning("%s: dropped the value of credential-like key %s.%s", what, path, key)
                out[key] = REDACTED
            else:
                out[key] = scrub_credentials(value, secrets, f"{path}.{key}", what=what, log=log)
        return out
    if isinstance(obj, (list, tuple)):
        return [scrub_credentials(v, secrets, path, what=what, log=log) for v in obj]
    if isinstance(obj, str) and any(s and s in obj for s in secrets):
        log.warning("%s: dropped a value at %s that contains a credential from the environment", what, path)
        return REDACTED
    return obj
