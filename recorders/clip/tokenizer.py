"""A small CLIP BPE tokenizer, built offline for a known word list.

CLIP's 49k-token vocabulary would make the built-in tiny CLIP's token table most of its weights. This builds a
vocabulary in CLIP's own layout — the 256 byte-level symbols, the same with the end-of-word suffix ``</w>``, the
learned merges, then ``<|startoftext|>`` and ``<|endoftext|>`` as the two largest ids — with merges learned by
ordinary BPE on the given words until each word is one token. Any other text still tokenizes (byte by byte). The
result is a ``transformers.CLIPTokenizer``, saved and loaded like any CLIP checkpoint's tokenizer; EOT being the
largest id keeps transformers' (and the reference code's) EOT pooling working.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOT = "<|endoftext|>"
SUFFIX = "</w>"


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent adjacent pair first (ties broken by the pair itself, so the result is
    deterministic), learned on ``words`` (lowercase, byte-level-safe ASCII) until each word is a single symbol."""
    pieces = {w: [*w[:-1], w[-1] + SUFFIX] for w in sorted(set(words)) if w}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for seq in pieces.values() for pair in zip(seq, seq[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, seq in pieces.items():
            merged: list[str] = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    merged.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            pieces[word] = merged


def build_tokenizer(words: Iterable[str], context_length: int) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary makes each of ``words`` one token; ``<|endoftext|>`` has the largest id."""
    alphabet = sorted(ByteLevel.alphabet())
    merges = learn_merges(w.lower() for w in words)
    tokens = [*alphabet, *(c + SUFFIX for c in alphabet), *(a + b for a, b in merges), BOS, EOT]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    # merge pairs as tuples: what the tokenizers backend takes (transformers' annotation says list[str])
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)  # type: ignore[arg-type]
