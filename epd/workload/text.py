"""Random prompt text of a given length in tokens, from a fixed list of common words."""

from __future__ import annotations

from typing import Any

import numpy as np

# Common short English words: most are a single token in BPE vocabularies of real models, so
# without a tokenizer one word approximates one token.
_WORD_TEXT = """
    a the of and to in is was he for it with as his on be at by had are but from or have an they
    which one you were her all she there would their we him been has when who will more no if
    out so said what up its about into than them can only other new some could time these two
    may then do first any my now such like our over man me even most made after also did many
    before must through back years where much your way well down should because each just those
    people how too little state good very make world still own see men work long get here
    between both life being under never day same another know while last might us great old
    year off come since against go came right used take three states himself few house use
    during without again place around however home small found thought went say part once
    general high upon school every does got united left number course war until always away
    something fact though water less public put think almost hand enough far took head yet
    government system better set told nothing night end why called didn find look going asked
    later point knew city next program business give group toward young days let room president
    side social given present several order national possible rather second face per among form
    important often things looking early white case become large big need four within felt
    along children saw best church ever least power development light thing seemed family
    interest want members mind country area others done turned although open god service
    certain kind problem began different door thus help sense means whole matter perhaps
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


def random_words(rng: np.random.Generator, num_words: int) -> list[str]:
    """`num_words` words drawn uniformly, with replacement, from `WORDS`."""
    return [WORDS[i] for i in rng.integers(0, len(WORDS), size=num_words)]


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of `text` without special tokens (transformers tokenizer or tokenizers.Tokenizer)."""
    encoded = tokenizer.encode(text, add_special_tokens=False)
    return len(getattr(encoded, "ids", encoded))


def make_prompt(rng: np.random.Generator, num_tokens: int, tokenizer: Any = None) -> str:
    """Random words making `num_tokens` tokens: exactly so with `tokenizer`, else one per word.

    "Exactly" counts the text tokenized on its own; a chat template around it may merge tokens
    at its edges.
    """
    if num_tokens == 0:
        return ""
    if tokenizer is None:
        return " ".join(random_words(rng, num_tokens))
    words = random_words(rng, 2 * num_tokens + 8)
    while count_tokens(tokenizer, " ".join(words)) < num_tokens:
        words += random_words(rng, len(words))
    # Longest prefix of words within budget (token counts grow with the prefix), found in
    # O(log n) encodes so long prompts stay cheap.
    lo, hi = (
        0,
        len(words),
    )  # invariant: prefix of lo words fits, prefix of hi+1 words does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(tokenizer, " ".join(words[:mid])) <= num_tokens:
            lo = mid
        else:
            hi = mid - 1
    return _fill_to(tokenizer, words[:lo], num_tokens, rng)


def _fill_to(tokenizer: Any, words: list[str], num_tokens: int, rng: np.random.Generator) -> str:
    """Append words that each add a token or more until the text has exactly `num_tokens`."""
    text = " ".join(words)
    num_now = count_tokens(tokenizer, text)
    candidates = [WORDS[i] for i in rng.permutation(len(WORDS))]
    while num_now < num_tokens:
        for word in candidates:
            longer = f"{text} {word}" if text else word
            num_longer = count_tokens(tokenizer, longer)
            if num_now < num_longer <= num_tokens:
                text, num_now = longer, num_longer
                break
        else:
            raise ValueError(
                f"cannot make a prompt of exactly {num_tokens} tokens with this tokenizer "
                f"(stuck at {num_now}); change workload.input_len or drop the tokenizer"
            )
    return text
