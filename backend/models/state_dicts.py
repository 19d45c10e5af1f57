"""Strict state-dict loading shared by the method packages' checkpoint readers (Point-E, LION): one error that lists
every unexpected, missing and wrong-shape key at once, instead of torch's first mismatch."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

__all__ = ["CheckpointError", "check_state_dict", "load_state_dict_checked", "preview_keys"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the architecture (the message lists every bad key)."""


def preview_keys(keys: list[str], limit: int = 20) -> str:
    """The first ``limit`` of ``keys``, comma-separated, then ``… (+N more)``."""
    return ", ".join(keys[:limit]) + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str = "<state_dict>") -> None:
    """Raise unless ``state`` has exactly ``module``'s keys (parameters and buffers) with its shapes.

    Works on a module built on the meta device (shapes only).

    Raises:
        CheckpointError: one message with every unexpected, missing and wrong-shape key (expected vs found).
    """
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    unexpected = sorted(k for k in state if k not in want)
    missing = sorted(k for k in want if k not in state)
    wrong = sorted(f"{k}: expected {list(want[k])}, found {list(state[k].shape)}"
                   for k in want if k in state and tuple(state[k].shape) != want[k])
    problems = [f"{len(keys)} {what}: {preview_keys(keys)}" for what, keys in
                (("unexpected key(s)", unexpected), ("missing key(s)", missing),
                 ("key(s) with the wrong shape", wrong)) if keys]
    if problems:
        raise CheckpointError(f"{where} does not match {type(module).__name__}: " + "; ".join(problems))


def load_state_dict_checked(module: nn.Module, state: Mapping[str, torch.Tensor], where: str = "<state_dict>") -> None:
    """:func:`check_state_dict`, then copy the tensors in (strict)."""
    check_state_dict(module, state, where)
    module.load_state_dict(dict(state), strict=True)
