"""Bad input is refused: a clear error naming the culprit, CLI exit 2, nothing already written lost.

Most commands run through the CLI's own ``main`` in this process (same code path as
``python -m timevec.cli``, without paying the imports per case); one case runs as a real
subprocess to pin the process exit code. Every command that points at a store that already
holds work checks afterwards that the store's files are byte-identical (``snapshot``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch
import yaml

from tests.reliability import (
    cli_subprocess,
    copy_store,
    populated_store,
    random_vector,
    run_cli,
    snapshot,
    tiny_config,
    write_config,
)
from timevec.config import CorpusConfig, dump_config
from timevec.data.corpus import load_corpus
from timevec.results import CELL_KEY, CELLS_TABLE, TABLES, cells_frame
from timevec.store import StoreError, VectorStore
from timevec.weights.vectors import TimeVector

YEARS = ["2014", "2015"]


@pytest.fixture(scope="module")
def populated(base_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store that already holds work: the base, lm/2014 and lm/2015, and a cells table."""
    root = tmp_path_factory.mktemp("populated") / "store"
    store = populated_store(base_store, root, YEARS)
    rows = [
        {"task": "lm", "granularity": "year", "vector": f"lm/{tr}", "train_period": tr, "test_period": te,
         "metric": "perplexity", "value": 10.0 + i, "higher_is_better": False, "n_examples": 8, "n_tokens": 100,
         "seconds": 0.1}
        for i, (tr, te) in enumerate((a, b) for a in YEARS for b in YEARS)
    ]
    store.write_table("cells", TABLES[CELLS_TABLE].arrow(cells_frame(rows)))
    return root


def _untouched(root: Path, before: dict[str, str]) -> None:
    after = snapshot(root)
    assert after == before, {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def _csv(path: Path, header: str, rows: list[str], encoding_bytes: bytes | None = None) -> Path:
    data = (header + "\n" + "\n".join(rows) + "\n").encode()
    path.write_bytes(data if encoding_bytes is None else data + encoding_bytes)
    return path


def _rows(n: int = 40, year: str = "2014") -> list[str]:
    return [f"tweet number {i} of {year},{year}-{(i % 12) + 1:02d}-15" for i in range(n)]


FILE_CORPUS = ["corpus.label_column=null", "corpus.key_column=null", "corpus.caps.train=null",
               "corpus.caps.validation=null", "corpus.caps.test=null"]


# ---------------------------------------------------------------------------- corpora


def _bad_corpora(tmp: Path) -> list[tuple[str, list[str], list[str]]]:
    """(case, config overrides, substrings the error must contain)."""
    wrong = _csv(tmp / "wrong.csv", "body,when", _rows())
    dates = _csv(tmp / "dates.csv", "text,date", _rows() + ["a tweet,not-a-date", "another tweet,"])
    latin = tmp / "latin1.csv"
    latin.write_bytes(("text,date\n" + "\n".join(_rows())).encode() + "\ncaf\xe9 au lait,2014-05-05\n".encode("latin-1"))
    jsonl = tmp / "latin1.jsonl"
    jsonl.write_bytes(b'{"text": "ok", "date": "2014-01-02"}\n{"text": "caf\xe9", "date": "2014-02-02"}\n')
    src = "corpus.source={}"
    return [
        ("wrong columns", [src.format(wrong), *FILE_CORPUS], ["missing text column 'text'", "date column 'date'",
                                                               str(wrong), "body", "when"]),
        ("bad dates, reject", [src.format(dates), *FILE_CORPUS, "corpus.bad_dates=reject"],
         [str(dates), "2 of 42 rows", "row 40: 'not-a-date'", "corpus.bad_dates"]),
        ("non-UTF-8 CSV", [src.format(latin), *FILE_CORPUS], [str(latin), "not valid UTF-8 at byte"]),
        ("non-UTF-8 JSONL", [src.format(jsonl), *FILE_CORPUS], [str(jsonl), "not valid UTF-8 at byte"]),
        ("missing file", [src.format(tmp / "nope.csv"), *FILE_CORPUS], [str(tmp / "nope.csv"), "not found"]),
        ("empty period", [src.format(_csv(tmp / "only2014.csv", "text,date", _rows())), *FILE_CORPUS],
         ["2015 has 0 train rows", "2016 has 0 train rows"]),
        # an extension of the stored range (2014–2015) to years the corpus lacks (a range that DROPS the stored
        # periods is refused first, by the extension check, naming periods.start)
        ("empty period", ["periods.end='2031'"], ["2030 has 0 train rows", "2031 has 0 train rows"]),
        ("label column absent", [src.format(_csv(tmp / "nolabel.csv", "text,date", _rows())), *FILE_CORPUS,
                                 "tasks=[lm, classification]", "corpus.label_column=component",
                                 "periods.end='2015'"],  # a new task on the stored periods (with new ones: refused first)
         ["label column 'component'"]),
    ]


def test_bad_corpora_are_refused_by_the_cli_and_nothing_is_lost(populated: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    before = snapshot(populated)
    cases = _bad_corpora(tmp_path)
    for case, overrides, culprits in cases:
        # periods 2014–2016 (2016 has no vector yet) so that the fleet must read the corpus
        config = write_config(tmp_path / "c.yaml", populated, "periods.end='2016'", *overrides)
        code, out, err = run_cli(capsys, "finetune", config)
        assert code == 2, f"{case}: exit {code}\n{out[-1500:]}\n{err[-1500:]}"
        for culprit in culprits:
            assert culprit in err, f"{case}: {culprit!r} not in {err!r}"
        assert "Traceback" not in err
    _untouched(populated, before)


def test_bad_dates_reported_not_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """bad_dates: report (the default) keeps going and lists each bad row; reject (above) fails."""
    path = _csv(tmp_path / "dates.csv", "text,date", _rows() + ["a tweet,not-a-date", "another tweet,", "x,2014-02-30"])
    corpus = load_corpus(CorpusConfig(source=str(path)))
    assert len(corpus.records) == 40
    assert list(corpus.bad_rows["row"]) == [40, 41, 42]
    assert list(corpus.bad_rows["reason"]) == ["unparseable date", "missing date", "unparseable date"]
    assert "3 of 43 rows have a missing or unparseable date" in caplog.text and str(path) in caplog.text


def test_non_utf8_parquet_is_a_corpus_error(populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "latin1.parquet"
    texts = [f"tweet {i}".encode() for i in range(40)] + [b"caf\xe9"]
    pq.write_table(pa.table({"text": pa.array(texts, pa.binary()), "date": ["2014-03-03"] * 41}), path)
    config = write_config(tmp_path / "c.yaml", populated, "periods.end='2016'", f"corpus.source={path}", *FILE_CORPUS)
    code, _out, err = run_cli(capsys, "finetune", config)
    assert code == 2 and str(path) in err and "UTF-8" in err


# ---------------------------------------------------------------------------- one period only


@pytest.mark.slow
def test_a_single_period_gives_graceful_tables_or_a_clear_message(
    ray_session: str, base_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = copy_store(base_store, tmp_path / "store")
    store = VectorStore(str(root))
    store.put_vector("lm", "2014", random_vector(store, 1))
    config = write_config(tmp_path / "one.yaml", root, "periods.end='2014'", "analogy.task=lm")

    code, out, err = run_cli(capsys, "evaluate", config)
    assert code == 0, err[-2000:]
    assert len(store.read_table("cells")) == 2  # lm/2014 and the base on 2014

    code, out, err = run_cli(capsys, "interpolate", config)
    assert code == 0, err[-2000:]
    assert "1 stored vector(s), nothing to interpolate" in caplog.text
    assert store.read_table("interpolation_best").empty

    code, out, err = run_cli(capsys, "analogy", config)  # needs a later period k: a clear refusal
    assert code == 2 and "no (j, k) pair" in err and "Traceback" not in err

    code, out, err = run_cli(capsys, "analyze", config)
    assert code == 0, err[-2000:]
    assert "a fit needs at least 3" in out  # the decay fit says why it has no slope

    code, out, err = run_cli(capsys, "report", config)
    assert code == 0, err[-2000:]
    assert (root / "reports" / "index.html").stat().st_size > 0

    code, out, err = run_cli(capsys, "vectors", config)
    assert code == 0 and "2014" in out
    assert store.verify() == []


# ---------------------------------------------------------------------------- configs


def _set(data: dict, dotted: str, value) -> dict:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


BAD_CONFIGS = [
    # (dotted key, value, substrings of the error)
    ("trainng", {"lr": 0.1}, ["trainng: unknown key"]),
    ("ray.gpus", 1, ["ray.gpus: unknown key"]),
    ("evaluation.max_exampels", 4, ["evaluation.max_exampels: unknown key"]),
    ("interpolation.alphas", [0.0, 1.5], ["interpolation.alphas", "[1.5]"]),
    ("interpolation.alphas", [-0.1, 0.5], ["interpolation.alphas", "[-0.1]"]),
    ("interpolation.alphas", [float("nan")], ["interpolation.alphas"]),
    ("interpolation.alphas", [], ["interpolation.alphas"]),
    ("analogy.alpha1", [-0.2, 1.0], ["analogy.alpha1", "-0.2"]),
    ("analogy.alpha2", [float("inf")], ["analogy.alpha2"]),
    ("analogy.alpha3", [float("nan")], ["analogy.alpha3"]),
    ("ray.gpus_per_run", -1, ["ray.gpus_per_run"]),
    ("ray.eval_actors", 0, ["ray.eval_actors"]),
    ("periods.start", "../x", ["periods.start", "'../x'"]),
    ("periods.end", "2014/../..", ["periods.end", "2014/../.."]),
    ("month_periods", {"start": "../2014", "end": "2014"}, ["month_periods.start"]),
    ("name", "../../etc", ["name"]),
    ("store.storage_options", {"aws_secret_access_key": "hunter2-do-not-echo"}, ["store.storage_options"]),
]


def test_bad_configs_are_refused_naming_the_key(populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(populated)
    good = yaml.safe_load(dump_config(tiny_config(populated)))
    for key, value, culprits in BAD_CONFIGS:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(_set(json.loads(json.dumps(good)), key, value)))
        code, out, err = run_cli(capsys, "finetune", path)
        assert code == 2, f"{key}={value!r}: exit {code}\n{out[-1000:]}\n{err[-1000:]}"
        assert str(path) in err, err
        for culprit in culprits:
            assert culprit in err, f"{key}={value!r}: {culprit!r} not in {err!r}"
        assert "hunter2-do-not-echo" not in err + out  # a refused credential is not echoed back
    # the same through --set overrides
    config = write_config(tmp_path / "ok.yaml", populated)
    for item, culprit in [("interpolation.alphas=[2.0]", "interpolation.alphas"), ("ray.num_gpus=1", "ray.num_gpus: unknown key"),
                          ("periods.start=../x", "periods.start"), ("training.steps=0", "training.steps"),
                          ("nonsense", "override 'nonsense'")]:
        code, _out, err = run_cli(capsys, "finetune", config, "--set", item)
        assert code == 2 and culprit in err, (item, err)
    _untouched(populated, before)


def test_path_like_analogy_source_period_is_refused_at_load(populated: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "c.yaml", populated, "periods.end='2015'")
    code, _out, err = run_cli(capsys, "finetune", config, "--set", "analogy.source_periods=['../x']")
    assert code == 2 and "analogy.source_periods" in err


def test_cli_exit_code_is_2_in_a_real_process(populated: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", populated)
    result = cli_subprocess("evaluate", config, "--set", "interpolation.alphas=[0.5, 7]")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "interpolation.alphas" in result.stderr and "[7.0]" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- a store from another base


OTHER_BASE = ["base.tiny.d_model=16"]  # another architecture: another base id and fingerprint


@pytest.mark.parametrize(
    "stage, periods_end",
    [
        pytest.param("evaluate", "2015", id="evaluate"),
        pytest.param("finetune", "2016", id="finetune-with-work-left"),
        pytest.param("finetune", "2015", id="finetune-all-stored"),
        pytest.param("interpolate", "2015", id="interpolate"),
    ],
)
def test_a_store_from_another_base_is_refused(
    ray_session: str, populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture, stage: str, periods_end: str
) -> None:
    before = snapshot(populated)
    config = write_config(tmp_path / "other.yaml", populated, f"periods.end='{periods_end}'", *OTHER_BASE)
    try:
        code, out, err = run_cli(capsys, stage, config)
    except Exception as exc:  # noqa: BLE001 - an uncaught error is a failure of this test, not a crash of it
        pytest.fail(f"{stage}: uncaught {type(exc).__name__}: {str(exc)[:500]}")
    assert code == 2, f"{stage}: exit {code}: {err[-1500:]}"
    assert "embedded-gpt2-d32" in err and "embedded-gpt2-d16" in err  # names both bases
    _untouched(populated, before)


# ---------------------------------------------------------------------------- corrupt stores


def _forge_shard(store: VectorStore, task: str, period: str, k: int, tensors: dict[str, torch.Tensor]) -> str:
    """Replace shard k with ``tensors`` and fix the manifest's sha256/bytes (a checksum-valid forgery)."""
    meta = {"base_fingerprint": store.base_fingerprint}
    data = safetensors.torch.save(tensors, metadata=meta)
    rel = f"vectors/{task}/{period}/shard-{k:05d}.safetensors"
    store.write_bytes(rel, data)
    manifest = store.manifest(task, period)
    manifest["shards"][k].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    store.write_bytes(f"vectors/{task}/{period}/manifest.json", json.dumps(manifest).encode())
    return rel


def test_store_verify_names_every_corrupt_file(base_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "store"
    store = populated_store(base_store, root, ["2012", "2013", "2014", "2015", "2016", "2017"])
    shard = root / "vectors/lm/2013/shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated
    manifest = root / "vectors/lm/2014/manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])  # truncated manifest: not JSON
    (root / "vectors/lm/2015/shard-00000.safetensors").unlink()  # a shard gone
    nan = store.get_vector("lm", "2016", names=store.shard_names(0)).tensors
    first = next(iter(nan))
    nan[first].view(-1)[0] = float("nan")
    _forge_shard(store, "lm", "2016", 0, nan)  # NaN with valid checksums
    header = root / "vectors/lm/2017/shard-00000.safetensors"
    data = bytearray(header.read_bytes())
    data[0:8] = (10**12).to_bytes(8, "little")  # absurd header length
    header.write_bytes(bytes(data))
    base_shard = root / "base/shard-00000.safetensors"
    base_shard.write_bytes(base_shard.read_bytes()[:-16])  # truncated base

    result = cli_subprocess("store", "verify", root)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
    expected = {
        "lm/2013": ["shard-00000.safetensors", "truncated"],
        "lm/2014": ["manifest.json", "not valid JSON"],
        "lm/2015": ["shard-00000.safetensors", "not found"],
        "lm/2016": ["shard-00000.safetensors", "NaN/Inf", first],
        "lm/2017": ["shard-00000.safetensors"],
        "base": ["base/shard-00000.safetensors"],
    }
    for label, words in expected.items():
        hits = [line for line in lines if f"{label}:" in line or f"{label} " in line or (label == "base" and "base:" in line)]
        assert hits, f"no problem reported for {label}: {lines}"
        assert all(any(w in h for h in hits) for w in words), (label, words, hits)
    assert len(lines) == len(expected), lines
    assert "verified" in result.stdout and "6 problem(s)" in result.stdout
    # only the vector with a good manifest-and-shards set verifies as a task filter
    code, out, _ = run_cli(capsys, "store", "verify", root, "--task", "lm")
    assert code == 1 and "5 problem(s)" in out and "PROBLEM base:" not in out
    code, _out, err = run_cli(capsys, "store", "ls", root)  # a corrupt manifest: a clear refusal, no traceback
    assert code == 2 and "lm/2014" in err and "manifest.json" in err


@pytest.mark.slow
def test_evaluate_refuses_a_corrupt_vector_and_a_corrupt_base(
    ray_session: str, base_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "store"
    store = populated_store(base_store, root, YEARS)
    config = write_config(tmp_path / "c.yaml", root, "periods.end='2015'")
    shard = root / "vectors/lm/2015/shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    code, out, err = run_cli(capsys, "evaluate", config)
    assert code == 2, err[-2000:]
    assert "lm/2015" in err and "shard-00000.safetensors" in err and "truncated" in err
    cells = store.read_table("cells")  # … after storing every cell it could compute
    assert set(cells["vector"]) == {"base", "lm/2014"} and not cells.duplicated(CELL_KEY).any()

    base = root / "base/shard-00000.safetensors"
    base.write_bytes(base.read_bytes()[:-100])
    store.put_vector("lm", "2015", random_vector(store, 5))  # lm/2015 is fine again: only the base is broken
    code, out, err = run_cli(capsys, "evaluate", config)
    assert code == 2, err[-2000:]
    assert "base" in err and "shard-00000.safetensors" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- NaN and refused overwrites


@pytest.mark.parametrize(
    "kind", ["nan", "inf", "shape"],
)
def test_a_refused_put_keeps_the_stored_vector(base_store: Path, tmp_path: Path, kind: str) -> None:
    store = VectorStore(str(copy_store(base_store, tmp_path / "store")))
    good = random_vector(store, 1)
    store.put_vector("lm", "2014", good)
    tensors = {n: t.clone() for n, t in good.items()}
    name = next(iter(tensors))
    if kind == "shape":
        tensors[name] = torch.zeros(tensors[name].numel() + 1)
    else:
        tensors[name].view(-1)[3] = float(kind)
    with pytest.raises(StoreError, match=rf"lm/2014.*{re.escape(name)}"):
        store.put_vector("lm", "2014", TimeVector(tensors))
    assert store.has_vector("lm", "2014"), "the refused overwrite removed the stored vector"
    assert store.get_vector("lm", "2014").equal(good) and store.verify() == []


# ---------------------------------------------------------------------------- path-like names


def test_path_like_names_in_cli_and_store_calls(populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(populated)
    outside = sorted(p.name for p in populated.parent.iterdir())
    for args in (
        ["store", "rm", populated, "lm/../2014"],
        ["store", "rm", populated, "../lm/2014"],
        ["store", "rm", populated, "lm/2014/../../.."],
        ["store", "ls", populated, "--task", "../lm"],
        ["store", "verify", populated, "--task", ".."],
    ):
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, out, err)
        assert "Traceback" not in err
    config = write_config(tmp_path / "c.yaml", populated)
    code, _out, err = run_cli(capsys, "vectors", config, "--task", "../x")
    assert code == 2 and "'../x'" in err
    store = VectorStore(str(populated))
    for period in ("../x", "2014/..", "2014/../../..", "/etc", "2014\x00", "2014-1", "14", "2014-00"):
        for call in (lambda: store.get_vector("lm", period), lambda: store.manifest("lm", period),
                     lambda: store.delete_vector("lm", period), lambda: store.get_vector("lm", period, names=store.shard_names(0)),
                     lambda: store.put_vector("lm", period, random_vector(store, 0))):
            with pytest.raises(StoreError, match="period"):
                call()
        assert store.has_vector("lm", period) is False
    _untouched(populated, before)
    assert sorted(p.name for p in populated.parent.iterdir()) == outside
