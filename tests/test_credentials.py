"""The one credential policy (timevec.credentials), pinned: which keys are refused, which are allowed,
at what depth, and what is scrubbed from what the store writes. Config and store use it both."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from timevec.config import StoreConfig, load_config
from timevec.credentials import (
    CREDENTIAL_ENV,
    CREDENTIAL_NAMES,
    credential_keys,
    environment_secrets,
    is_credential_key,
    refuse_credentials,
    scrub_credentials,
)
from timevec.store import StoreError, VectorStore

REPO = Path(__file__).resolve().parents[1]

# Everything either old rule refused (config: ...(^|_)key(_id)?$|^key$|access_key; store: ...(^|_)key$|^key).
REFUSED = [
    "key", "KEY", "secret", "token", "password", "passwd", "credentials", "api_key", "access_key", "secret_key",
    "session_token", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "hf_token",
    "my_secret_value", "SecretAccessKey", "key_id", "keyfile", "private_key", "access_key_id", "x_key_id",
]  # fmt: skip
# fsspec/s3fs options that configs, tests and docs use or may use: never refused.
ALLOWED = [
    "endpoint_url", "client_kwargs", "config_kwargs", "use_listings_cache", "anon", "region_name", "use_ssl",
    "requester_pays", "default_block_size", "skip_instance_cache", "s3_additional_kwargs", "version_aware",
    "cache_regions", "listings_expiry_time", "monkey", "turnkey",
]  # fmt: skip


@pytest.mark.parametrize("key", REFUSED)
def test_refused_keys(key: str) -> None:
    assert is_credential_key(key)
    with pytest.raises(ValueError, match=rf"^storage_options\.{key}: credentials come from the standard AWS chain"):
        refuse_credentials({key: "x"})
    with pytest.raises(StoreError, match="AWS chain"):
        VectorStore("/tmp/unused-store", {key: "x"})


@pytest.mark.parametrize("key", ALLOWED)
def test_allowed_keys(key: str, tmp_path: Path) -> None:
    assert not is_credential_key(key)
    assert refuse_credentials({key: 1}) == {key: 1}
    assert list(credential_keys({key: {"endpoint_url": "http://h:1"}})) == []


def test_every_scrubbed_name_is_also_refused() -> None:
    assert all(is_credential_key(name) for name in CREDENTIAL_NAMES)
    assert all(is_credential_key(var.lower()) for var in CREDENTIAL_ENV)


def test_nested_options_are_refused_at_any_depth(tmp_path: Path) -> None:
    nested = {"endpoint_url": "http://h:1", "client_kwargs": {"region_name": "x", "config": {"aws_session_token": "t"}}}
    assert list(credential_keys(nested)) == ["storage_options.client_kwargs.config.aws_session_token"]
    with pytest.raises(ValueError, match=r"^storage_options\.client_kwargs\.config\.aws_session_token: "):
        refuse_credentials(nested)
    with pytest.raises(StoreError, match=r"^storage_options\.client_kwargs\.config\.aws_session_token: .*AWS chain"):
        VectorStore(str(tmp_path / "s"), nested)
    with pytest.raises(StoreError, match=r"^storage_options\.client_kwargs\.token: credentials come from the AWS chain$"):
        VectorStore(str(tmp_path / "s"), {"client_kwargs": {"token": "t"}})
    with pytest.raises(ValidationError, match=r"storage_options\.client_kwargs\.config\.aws_session_token"):
        StoreConfig(url="s3://b/p", storage_options=nested)
    ok = {"endpoint_url": "http://h:1", "client_kwargs": {"endpoint_url": "http://h:1", "region_name": "x"}}
    assert refuse_credentials(ok) is ok
    assert VectorStore(str(tmp_path / "s"), ok).storage_options == ok


def test_config_keys_that_look_like_credentials_are_not_storage_options() -> None:
    """The broad pattern applies to storage_options only: config fields such as ``key_column`` or
    ``summary_max_new_tokens`` would match it, and they load."""
    assert is_credential_key("key_column") and is_credential_key("summary_max_new_tokens")
    demo = yaml.safe_load((REPO / "timevec/demo/demo.yaml").read_text())
    config = load_config(REPO / "timevec/demo/demo.yaml")
    assert config.store.storage_options == (demo.get("store", {}).get("storage_options") or {})


def test_scrub_names_and_environment_values(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    secrets = environment_secrets()
    assert len(secrets) == len(CREDENTIAL_ENV) and "s3cr3t-value" in secrets and "hf_abcdef" in secrets
    run = {
        "tokens": 12,
        "tokens_per_second": 3.5,
        "config": {"corpus": {"key_column": "id"}, "evaluation": {"summary_max_new_tokens": 8}},
        "storage": {"Secret": "x", "endpoint_url": "http://h:1"},
        "list": [{"aws_session_token": "t"}, "uses hf_abcdef here", "plain"],
        "note": ("tuple", "with s3cr3t-value"),
        "hf_token": None,
    }
    with caplog.at_level(logging.WARNING):
        out = scrub_credentials(run, secrets)
    assert out == {
        "tokens": 12,
        "tokens_per_second": 3.5,
        "config": {"corpus": {"key_column": "id"}, "evaluation": {"summary_max_new_tokens": 8}},
        "storage": {"Secret": "<redacted>", "endpoint_url": "http://h:1"},
        "list": [{"aws_session_token": "<redacted>"}, "<redacted>", "plain"],
        "note": ["tuple", "<redacted>"],
        "hf_token": "<redacted>",
    }
    assert run["storage"]["Secret"] == "x"  # a copy: the caller's object is untouched
    assert "run.storage.Secret" in caplog.text and "run.note" in caplog.text
    assert "s3cr3t-value" not in caplog.text and "hf_abcdef" not in caplog.text
    assert scrub_credentials({"a": "b"}, ["", ""]) == {"a": "b"}  # unset variables match nothing


def test_the_store_writes_no_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test-id")
    store = VectorStore(str(tmp_path / "s"))
    store.init("b", {"w": torch.ones(4)}, target_shard_bytes=1024)
    m = store.put_vector("lm", "2014", {"w": torch.zeros(4)}, {"password": "pw", "note": "AKIA-test-id", "tokens": 3})
    assert m["run"] == {"password": "<redacted>", "note": "<redacted>", "tokens": 3}
    for rel in store.list_paths(""):
        data = store.read_bytes(rel)
        assert b"AKIA-test-id" not in data and b'"pw"' not in data, rel
