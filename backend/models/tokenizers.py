"""Tokenizers built in memory for the ``tiny-random`` presets (no vocabulary file, no network)."""

from __future__ import annotations

from collections.abc import Sequence


def byte_level_clip_tokenizer(model_max_length: int = 77):
    """A real ``CLIPTokenizer`` whose vocabulary is the 256 byte symbols (plus their word-final forms), no merges.

    Built in memory: every string tokenizes (one token per byte), ids < 514.
    """
    from transformers import CLIPTokenizer

    # GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+n.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for s in symbols:
            vocab[s + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def check_texts(texts: Sequence[str], what: str = "text") -> list[str]:
    """``texts`` as a list after checking it is a non-empty sequence of strings (not one string).

    Args:
        what: the noun of one item in the messages (``"text"``, ``"prompt"``); its plural names the whole.

    Raises:
        ValueError: one string, not a sequence, empty, or an item that is not a string (named by its index).
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{what}s must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{what}s is empty: need at least one prompt")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{what} {i} must be a string, got {type(t).__name__}")
    return list(texts)

