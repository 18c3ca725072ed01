"""Byte-level BPE for tiny checkpoints, trained in-process on ``CORPUS``.

The pipeline (NFC normalizer, Qwen2 split regex, byte-level pre-tokenizer and decoder) is the one
transformers' ``Qwen2Tokenizer`` rebuilds from ``vocab``/``merges`` when it loads a checkpoint, so
the saved tokenizer and the loaded one encode identically. Special tokens get the ids after the
learned vocabulary, in the order given, as in the real Qwen checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from epd.tiny.corpus import CORPUS

# Qwen2's pre-tokenizer split (a published format fact: contractions, letter runs, single digits,
# punctuation runs, newlines, spaces).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Upper bound on the learned vocab. CORPUS runs out of pairs seen twice first: it yields 634
# (256 bytes + 378 merges); a common word is one or two tokens, so prompts stay short.
DEFAULT_BPE_VOCAB_SIZE = 768


def train_bpe(
    special_tokens: Sequence[str],
    vocab_size: int = DEFAULT_BPE_VOCAB_SIZE,
    corpus: str = CORPUS,
) -> Tokenizer:
    """Train a Qwen2-style byte-level BPE on ``corpus`` and append ``special_tokens``.

    Deterministic: the same arguments give a byte-identical ``Tokenizer.to_str()`` in any process.
    The learned vocabulary has at most ``vocab_size`` entries (ids ``0..vocab_size-1``, all 256
    bytes included, so any text encodes); special tokens follow in the order given.
    """
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"duplicate special tokens: {list(special_tokens)}")
    tokenizer = Tokenizer(
        BPE(
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(corpus.splitlines(keepends=True), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special_tokens])
    return tokenizer


def special_token_ids(tokenizer: Tokenizer, special_tokens: Sequence[str]) -> dict[str, int]:
    """Map each special token to its id in ``tokenizer`` (raises if one is missing)."""
    ids = {token: tokenizer.token_to_id(token) for token in special_tokens}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise ValueError(f"special tokens not in tokenizer: {missing}")
    return ids


def padded_vocab_size(num_tokens: int, multiple: int = 128) -> int:
    """Model vocab for a tokenizer of ``num_tokens``: the next multiple of ``multiple`` strictly
    above it, so (as in real Qwen checkpoints, e.g. 152064 > 151665) some ids have no token and a
    random model may emit them."""
    return (num_tokens // multiple + 1) * multiple


def qwen_tokenizer(special_tokens: tuple[str, ...], chat_template: str, model_max_length: int, **extra: Any) -> Any:
    """The tiny BPE trained with ``special_tokens``, wrapped as the Qwen2 tokenizer every Qwen family
    uses: eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos/unk."""
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(
        tokenizer_object=train_bpe(special_tokens),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=model_max_length,
        chat_template=chat_template,
        **extra,
    )
