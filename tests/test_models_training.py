import copy
import math

import pytest
import torch

from timevec.config import BaseConfig, TinyModel, TrainingConfig
from timevec.data.models import (
    IGNORE,
    assign_parameters,
    build_model,
    collate,
    fingerprint,
    float_parameters,
    is_encoder_decoder,
    lm_examples,
    load_tokenizer,
    prompt_examples,
    token_losses,
)
from timevec.train.loop import batch_indices, train, wrap_lora

TINY = TinyModel(d_model=32, num_layers=1, num_heads=2, d_ff=64, max_positions=64)
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Make it great again, tremendous. " * 4] * 8


@pytest.fixture(params=["t5", "gpt2"])
def base(request):
    return BaseConfig(source="embedded", arch=request.param, tiny=TINY)


def test_embedded_model_builds_offline_with_byte_vocab(base):
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer)
    assert model.config.vocab_size == len(tokenizer) == 384
    assert is_encoder_decoder(model) == (base.arch == "t5")
    params = float_parameters(model)
    assert params and all(p.dtype == torch.float32 for p in params.values())


def test_fingerprint_is_stable_and_sensitive(base):
    tokenizer = load_tokenizer(base)
    a = float_parameters(build_model(base, tokenizer))
    b = float_parameters(build_model(base, tokenizer))
    assert fingerprint(a) == fingerprint(b)  # the embedded architecture is seeded
    name = next(iter(a))
    changed = dict(a)
    changed[name] = a[name].clone()
    changed[name].view(-1)[0] += 1e-7
    assert fingerprint(changed) != fingerprint(a)


def test_next_block_objective_pairs_consecutive_blocks():
    tokenizer = load_tokenizer(BaseConfig())
    examples = lm_examples(["abcdefghij"], tokenizer, encoder_decoder=True, block=4)
    ids = tokenizer("abcdefghij", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert [list(e.input_ids) for e in examples] == [ids[0:4], ids[4:8]]
    assert [list(e.labels) for e in examples] == [ids[4:8], ids[8:11]]
    decoder_only = lm_examples(["abcdefghij"], tokenizer, encoder_decoder=False, block=4)
    assert all(e.input_ids == e.labels for e in decoder_only)
    span = lm_examples(["abcdefghij" * 5], tokenizer, encoder_decoder=True, block=40, objective="span_corruption")
    assert len(span[0].input_ids) < 40 and span[0].labels[-1] == tokenizer.eos_token_id


def test_prompt_examples_mask_the_prompt_for_decoder_only():
    tokenizer = load_tokenizer(BaseConfig())
    [ex] = prompt_examples(["hello"], ["pos"], tokenizer, encoder_decoder=False, max_length=64, prefix="classify")
    n_target = len(tokenizer("pos", add_special_tokens=False)["input_ids"]) + 1
    assert ex.labels[-n_target:] == ex.input_ids[-n_target:]
    assert set(ex.labels[:-n_target]) == {IGNORE}
    [long] = prompt_examples(["x" * 500], ["pos"], tokenizer, encoder_decoder=False, max_length=64, prefix="classify")
    assert len(long.input_ids) <= 64 and long.labels[-1] == tokenizer.eos_token_id


def test_token_losses_match_the_models_mean_loss(base):
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer).eval()
    examples = lm_examples(TEXTS[:4], tokenizer, is_encoder_decoder(model), 32)[:4]
    batch = collate(examples, tokenizer.pad_token_id, is_encoder_decoder(model))
    sums, counts = token_losses(model, batch)
    with torch.no_grad():
        reference = model(**batch).loss.item()
    assert math.isclose(float(sums.sum().detach() / counts.sum()), reference, rel_tol=1e-5)


def test_batch_order_is_a_pure_function_and_covers_each_epoch():
    first_epoch = [i for step in range(5) for i in batch_indices(10, 2, step, seed=3)]
    assert sorted(first_epoch) == list(range(10))
    assert batch_indices(10, 4, 7, seed=3) == batch_indices(10, 4, 7, seed=3)
    assert batch_indices(10, 4, 7, seed=3) != batch_indices(10, 4, 7, seed=4)


def test_data_parallel_workers_share_out_the_very_batches_of_one_worker():
    for micro in range(7):  # 7 micro-batches of 4 over 10 examples: epoch boundaries included
        whole = batch_indices(10, 4, micro, seed=3)
        shares = [batch_indices(10, 4, micro, seed=3, shard=(rank, 2)) for rank in range(2)]
        assert all(len(s) == 2 for s in shares) and sorted(shares[0] + shares[1]) == sorted(whole)


def test_a_few_steps_lower_the_loss_and_resume_is_exact(base):
    tokenizer = load_tokenizer(base)
    examples = lm_examples(TEXTS, tokenizer, base.arch == "t5", 32)
    cfg = TrainingConfig(lr=3e-3, steps=12, batch_size=4, checkpoint_every=6, schedule="linear")
    states = []
    model, result = train(build_model(base, tokenizer), examples, cfg, tokenizer.pad_token_id,
                          report=lambda m, s: states.append(copy.deepcopy(s)) if s else None)
    assert result.final_loss < result.first_loss
    assert [s["step"] for s in states] == [6, 12]
    # resuming at step 6 reproduces the uninterrupted run bit for bit
    resumed, _ = train(build_model(base, tokenizer), examples, cfg, tokenizer.pad_token_id, resume=states[0])
    for (name, a), b in zip(float_parameters(model).items(), float_parameters(resumed).values()):
        assert torch.equal(a, b), name


def test_a_lora_checkpoint_holds_the_adapters_only_and_resume_is_exact(base):
    """The frozen weights are the run's start, rebuilt on resume: a LoRA checkpoint does not copy them."""
    tokenizer = load_tokenizer(base)
    examples = lm_examples(TEXTS, tokenizer, base.arch == "t5", 32)
    targets = ["q", "v"] if base.arch == "t5" else ["c_attn"]
    cfg = TrainingConfig(lr=1e-2, steps=6, batch_size=4, checkpoint_every=3,
                         lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets})
    states = []
    model, _ = train(build_model(base, tokenizer), examples, cfg, tokenizer.pad_token_id,
                     report=lambda m, s: states.append(copy.deepcopy(s)) if s else None)
    assert [s["step"] for s in states] == [3, 6]
    wrapped = wrap_lora(build_model(base, tokenizer), cfg)
    adapters = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters) and set(states[0]["model"]) == adapters
    # (a copy per resume: the optimizer adopts the state's tensors and updates them in place)
    resumed, _ = train(build_model(base, tokenizer), examples, cfg, tokenizer.pad_token_id, resume=copy.deepcopy(states[0]))
    for (name, a), b in zip(float_parameters(model).items(), float_parameters(resumed).values()):
        assert torch.equal(a, b), name
    # a checkpoint with every tensor (as they were written before) resumes the same way
    whole = copy.deepcopy({**states[0], "model": {**wrapped.state_dict(), **states[0]["model"]}})
    resumed, _ = train(build_model(base, tokenizer), examples, cfg, tokenizer.pad_token_id, resume=whole)
    assert all(torch.equal(a, b) for a, b in zip(float_parameters(model).values(), float_parameters(resumed).values()))
    # ... and one that lacks an adapter is refused
    lacking = {**states[0], "model": dict(list(states[0]["model"].items())[1:])}
    with pytest.raises(ValueError, match="lacks"):
        train(build_model(base, tokenizer), examples, cfg, tokenizer.pad_token_id, resume=lacking)


def test_lora_run_is_merged_before_tau(base):
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer)
    names = set(float_parameters(model))
    targets = ["q", "v"] if base.arch == "t5" else ["c_attn"]
    cfg = TrainingConfig(lr=1e-2, steps=3, batch_size=4, lora={"r": 4, "alpha": 8, "target_modules": targets})
    merged, _ = train(model, lm_examples(TEXTS, tokenizer, base.arch == "t5", 32), cfg, tokenizer.pad_token_id)
    assert set(float_parameters(merged)) == names  # plain parameter names: the adapter is folded in
    fresh = float_parameters(build_model(base, tokenizer))
    changed = [n for n, p in float_parameters(merged).items() if not torch.equal(p, fresh[n])]
    assert changed and all(any(t in n for t in targets) for n in changed)


def test_assign_parameters_checks_names_and_shapes(base):
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer)
    tensors = {k: torch.zeros_like(v) for k, v in float_parameters(model).items()}
    assign_parameters(model, tensors)
    assert all(float(p.detach().abs().sum()) == 0 for p in float_parameters(model).values())
    name = next(iter(tensors))
    with pytest.raises(ValueError, match=name):
        assign_parameters(model, {**tensors, name: torch.zeros(3)})
    del tensors[name]
    with pytest.raises(KeyError, match="lack 1"):
        assign_parameters(model, tensors)
