"""A T5 with a real subword tokenizer, built offline: the path ``google-t5/t5-small`` takes on a cluster.

:func:`build_t5_unigram` trains a Unigram (SentencePiece-style) tokenizer with the ``tokenizers``
library on a corpus's texts (NFKC normalisation, Metaspace ``▁`` word boundaries, T5's special
tokens ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 and the ``<extra_id_k>`` sentinels), builds a
``T5ForConditionalGeneration`` from a ``T5Config`` (random init) and writes both with
``save_pretrained`` to one directory. ``base: {source: hub, hub_id: DIR}`` then loads it through
the Auto classes exactly as a hub model: subword ids, next-block LM, label scoring and
generation all run on the real-tokenizer code path, with no network.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch


def train_unigram_tokenizer(texts: Iterable[str], vocab_size: int = 2000, sentinels: int = 32):
    """A ``PreTrainedTokenizerFast`` over a freshly trained Unigram model (T5's special tokens)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    extra = [f"<extra_id_{k}>" for k in range(sentinels)]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>", *extra], unk_token="<unk>", shrinking_factor=0.75
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_special_tokens=extra,
    )


def build_t5_unigram(
    texts: Iterable[str],
    directory: str | Path,
    vocab_size: int = 2000,
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 256,
    seed: int = 0,
) -> Path:
    """Train the tokenizer on ``texts``, build a T5 for it, ``save_pretrained`` both to ``directory``."""
    from transformers import T5Config, T5ForConditionalGeneration

    directory = Path(directory)
    tokenizer = train_unigram_tokenizer(texts, vocab_size)
    config = T5Config(  # type: ignore[call-arg]  # PretrainedConfig's **kwargs
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=max(d_model // num_heads, 4),
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
