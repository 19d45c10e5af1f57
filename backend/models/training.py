"""The training loop every method's ``python -m backend train <name>`` shares (Michelangelo, LION).

One loop, one output layout, one resume rule:

- AdamW (betas (0.9, 0.99), eps 1e-6) with linear warm-up then cosine decay to ``lr · MIN_LR_RATIO``
  (:func:`lr_factor`), gradient-norm clipping, a tqdm bar, a ``loss_log.jsonl`` line every ``log_every`` steps;
- the output folder holds the method's checkpoint (written by the method's ``save_weights`` callable),
  ``train_state.pt`` (optimiser state, step, the training config) and ``loss_log.jsonl``; a resumed run trims log
  lines past its saved step;
- exact resume: every step's random draws come from ``numpy.random.default_rng([seed, i])`` and a torch generator
  seeded from ``(seed, i)`` (:func:`step_generator`), ``i`` the 0-based step, so a run resumed from step ``s``
  continues the trajectory of an uninterrupted run bit for bit (same device, same library versions).

The settings object ``cfg`` is any dataclass with the fields ``steps``, ``lr``, ``warmup_steps``, ``weight_decay``,
``grad_clip``, ``seed``, ``save_every``, ``log_every``, ``resume`` and ``out`` (the methods' training configs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "LOSS_LOG", "MIN_LR_RATIO", "TrainingError", "LoopResult", "lr_factor", "step_generator",
           "batch_indices", "prepare_out", "load_state", "trim_log", "train_loop"]

STATE_FILE = "train_state.pt"
LOSS_LOG = "loss_log.jsonl"
MIN_LR_RATIO = 1e-3
"""Final learning rate / peak learning rate of the cosine decay (Michelangelo's public ``f_min``)."""


class TrainingError(ValueError):
    """Training cannot start or resume (bad output folder, data without the needed captions/images, mismatch)."""


@dataclass
class LoopResult:
    """What :func:`train_loop` returns: the last completed step and the losses of every step run in this call."""

    step: int
    history: list[dict[str, float]]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = MIN_LR_RATIO) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine
    decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    """The torch generator of 0-based step ``step``: seeded from ``(seed, step)`` only (exact resume)."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) % (2 ** 63))
    return gen


def batch_indices(rng: np.random.Generator, n: int, batch_size: int) -> list[int]:
    """Indices of ``batch_size`` items of ``n``: distinct while batch_size <= n; otherwise whole permutations, then
    a partial one."""
    reps = -(-batch_size // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:batch_size].tolist()


def prepare_out(out: str | Path, resume: bool, kind: str, has_checkpoint: Callable[[Path], bool]) -> Path:
    """Check the output folder: with ``resume`` it must hold a saved run, without it must not.

    Args:
        has_checkpoint: whether a folder holds the method's checkpoint.

    Raises:
        TrainingError: the path is a file, nothing to resume, or a run already there without ``resume``.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise TrainingError(f"output path {str(out)!r} exists and is not a folder")
    state = out / STATE_FILE
    if resume:
        if not state.is_file() or not has_checkpoint(out):
            raise TrainingError(f"cannot resume: {str(out)!r} holds no saved run ({STATE_FILE} + checkpoint); "
                                f"start without --resume")
    elif state.is_file() or has_checkpoint(out):
        raise TrainingError(f"{str(out)!r} already holds a {kind} checkpoint; pass --resume to continue it or choose "
                            f"another --out")
    return out


def load_state(out: Path, kind: str) -> dict[str, Any]:
    """The saved training state of a ``kind`` run in ``out``.

    Raises:
        TrainingError: the state file belongs to another kind of training.
    """
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise TrainingError(f"{str(out / STATE_FILE)!r} is not a {kind} training state "
                            f"(found {state.get('kind') if isinstance(state, dict) else type(state).__name__!r})")
    return state


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (a run resumed from an earlier save rewrites them)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(k + "\n" for k in kept))


def train_loop(kind: str, cfg: Any, trainable: torch.nn.Module, start_state: dict[str, Any] | None,
               make_batch: Callable[[int, np.random.Generator], Any],
               step_fn: Callable[[Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
               save_weights: Callable[[int, list[dict[str, float]]], None], out: Path, device: torch.device,
               progress: bool, callback: Callable[[int, dict[str, float]], None] | None) -> LoopResult:
    """Run steps ``start + 1 … cfg.steps`` (see the module docstring).

    Args:
        kind: the run's name (``shape_vae``, ``lion_vae`` …), stored in the state and shown on the bar.
        cfg: the training settings (fields listed in the module docstring).
        trainable: the module whose ``requires_grad`` parameters AdamW updates.
        start_state: :func:`load_state`'s dict on resume (optimiser, step), else None.
        make_batch: ``make_batch(i, rng)`` → the batch of 0-based step ``i``, drawing only from ``rng`` (seeded by
            ``(seed, i)``).
        step_fn: ``step_fn(batch, generator)`` → ``(loss scalar, {term: float})``.
        save_weights: ``save_weights(step, history)`` writes the method's checkpoint into ``out``.
        out: the output folder (created now).
        device: where the generators live.
        progress: show a tqdm bar. callback: ``callback(step, record)`` after every step.

    Returns:
        :class:`LoopResult` (the checkpoint and state are saved every ``save_every`` steps and at the end).

    Raises:
        FloatingPointError: a non-finite loss (naming the step and the terms).
    """
    from tqdm import tqdm

    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), eps=1e-6, weight_decay=cfg.weight_decay)
    start = 0
    if start_state is not None:
        optimizer.load_state_dict(start_state["optimizer"])
        start = int(start_state["step"])
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr
    out.mkdir(parents=True, exist_ok=True)  # only now: a run that fails on its data leaves no folder behind
    log_path = out / LOSS_LOG
    trim_log(log_path, start)
    history: list[dict[str, float]] = []
    train_config = dataclasses.asdict(cfg)

    def save(step: int) -> None:
        save_weights(step, history)
        tmp = out / (STATE_FILE + ".tmp")
        torch.save({"kind": kind, "step": step, "optimizer": optimizer.state_dict(), "train_config": train_config},
                   tmp)
        tmp.replace(out / STATE_FILE)

    if start >= cfg.steps:
        log.info("%s: already at step %d >= steps %d; nothing to do", out, start, cfg.steps)
    trainable.train()
    bar = tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True, disable=not progress,
               desc=f"train {kind}")
    t0 = time.perf_counter()
    step = start
    with open(log_path, "a") as log_file:
        for step in range(start + 1, cfg.steps + 1):
            i = step - 1  # 0-based index of this step: its random draws and learning rate
            factor = lr_factor(i, cfg.warmup_steps, cfg.steps)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            batch = make_batch(i, np.random.default_rng([cfg.seed, i]))
            loss, terms = step_fn(batch, step_generator(device, cfg.seed, i))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{kind} loss became {loss.item()} at step {step} (terms {terms}); lower "
                                         f"--lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            optimizer.step()
            record = {"step": step, "loss": float(loss.detach()), **terms, "grad_norm": float(grad_norm),
                      "lr": cfg.lr * factor}
            history.append(record)
            if step % cfg.log_every == 0 or step == cfg.steps:
                log_file.write(json.dumps({**record, "time_s": round(time.perf_counter() - t0, 3)}) + "\n")
                log_file.flush()
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "lr", "grad_norm")},
                            refresh=False)
            if step % cfg.save_every == 0 and step != cfg.steps:
                save(step)
            if callback is not None:
                callback(step, record)
    bar.close()
    if step > start or start_state is None:
        save(step)
    return LoopResult(step=max(step, start), history=history)
