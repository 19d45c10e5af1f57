"""Tokenizers built in memory for the ``tiny-random`` presets (no vocabulary file, no network)."""

from __future__ import annotations


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
