"""The one preparer of evaluation sets: built once per study, kept in the store, read back identical."""

from __future__ import annotations

from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import EXAMPLES_DIR, eval_set_key, prepare_eval_sets, prepare_split
from timevec.data.models import base_is_encoder_decoder, load_tokenizer
from timevec.store import VectorStore

TINY = "timevec/demo/tiny.yaml"


def _config(tmp_path, *extra):
    return load_config(TINY, [f"store.url={tmp_path / 'store'}", "periods.start='2015'", "periods.end='2016'",
                              "evaluation.max_examples=5", *extra])


def test_sets_are_built_once_kept_in_the_store_and_read_back_equal(tmp_path):
    config = _config(tmp_path)
    store = VectorStore.from_config(config.store)
    corpus, tokenizer = load_corpus(config.corpus), load_tokenizer(config.base)
    built = prepare_eval_sets(config, splits=("test", "validation"), store=store, corpus=corpus, tokenizer=tokenizer)
    files = store.list_paths(EXAMPLES_DIR)
    # one Arrow file per (task, period, split): 2 tasks x 2 years x 2 splits
    assert len(files) == len(config.tasks) * 2 * 2 and all(f.endswith(".arrow") for f in files)
    # read back from the store alone: no corpus or tokenizer is loaded (passing broken ones proves it)
    again = prepare_eval_sets(config, splits=("test", "validation"), store=store, corpus=object(), tokenizer=object())
    assert again == built
    # and equal to a direct preparation, field by field (what every stage evaluated before)
    ed = base_is_encoder_decoder(config.base)
    for split in ("test", "validation"):
        for (task, _granularity), sets in built[split].items():
            for period, prepared in sets.items():
                assert prepared == prepare_split(task, corpus, period, tokenizer, ed, config.evaluation, split=split)
                assert prepared.n_examples > 0 and prepared.split == split
    assert built["test"][("classification", "year")]["2015"].gold  # labels survive the round trip


def test_a_changed_setting_builds_a_new_set(tmp_path):
    a, b = _config(tmp_path), _config(tmp_path, "evaluation.max_examples=3")
    ed = base_is_encoder_decoder(a.base)
    assert eval_set_key(a, "lm", "2015", "test", ed) != eval_set_key(b, "lm", "2015", "test", ed)
    assert eval_set_key(a, "lm", "2015", "test", ed) != eval_set_key(a, "lm", "2015", "validation", ed)
    assert eval_set_key(a, "lm", "2015", "test", ed) == eval_set_key(_config(tmp_path), "lm", "2015", "test", ed)
    store = VectorStore.from_config(a.store)
    small = prepare_eval_sets(b, {("lm", "year"): ["2015"]}, store=store)["test"][("lm", "year")]["2015"]
    large = prepare_eval_sets(a, {("lm", "year"): ["2015"]}, store=store)["test"][("lm", "year")]["2015"]
    assert small.n_examples == 3 and large.n_examples == 5
