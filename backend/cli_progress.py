"""Progress of a job on the command line: a live bar on a terminal, plain log lines in a file or a pipe.

The job's own ``progress`` events drive both (stage, step, total, losses, ``eta_s`` from the pipeline's clock, which
restarts at every stage, :class:`backend.pipelines.base.JobContext`). Nothing is drawn before the first event, so no
empty bar stands in front of a parameter error.

- Terminal (``stream.isatty()``): one tqdm bar per stage, redrawn at most ``min_interval_s`` apart, the pipeline's ETA
  and the latest losses in its postfix.
- File or pipe: one line per ``line_every`` of the stage's steps (every 5 % by default) or ``line_interval_s``
  seconds, whichever comes first, plus the first and the last step of every stage — no carriage returns, so a
  5,000-step job writes ~20 lines per stage.
- ``enabled=False`` (``--no-progress``): nothing.
"""

from __future__ import annotations

import time
from typing import Callable, TextIO

from tqdm import tqdm

from blender_addon.core.text import format_duration


class ProgressReporter:
    """Turns a job's ``progress`` events into a bar or log lines (see the module docstring).

    Args:
        stream: where to write (``sys.stderr``).
        enabled: False = write nothing.
        line_every: fraction of a stage's steps between two log lines (file/pipe mode).
        line_interval_s: seconds after which a log line is written anyway (file/pipe mode).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, stream: TextIO, enabled: bool = True, line_every: float = 0.05, line_interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.enabled = enabled
        self.live = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.line_every = line_every
        self.line_interval_s = line_interval_s
        self.clock = clock
        self._bar: tqdm | None = None
        self._stage: str | None = None
        self._last_step = -1
        self._last_line_t = 0.0

    def update(self, stage: str, step: int, total: int, losses: dict[str, float | None], eta_s: float | None) -> None:
        """One ``progress`` event of the job."""
        if not self.enabled:
            return
        new_stage = stage != self._stage
        self._stage = stage
        if self.live:
            self._update_bar(new_stage, stage, step, total, losses, eta_s)
        else:
            self._maybe_line(new_stage, stage, step, total, losses, eta_s)

    def close(self) -> None:
        """End the bar (terminal mode)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ---- terminal ---------------------------------------------------------------------------------------------------

    def _update_bar(self, new_stage, stage, step, total, losses, eta_s) -> None:
        if new_stage or self._bar is None:
            self.close()
            self._bar = tqdm(total=max(total, 1), desc=stage, unit="step", file=self.stream, dynamic_ncols=True,
                             mininterval=0.2, bar_format="{desc} {percentage:3.0f}%|{bar}| {n}/{total} "
                                                         "[{elapsed}{postfix}]")
        bar = self._bar
        bar.total = max(total, 1)
        bar.set_postfix_str(f", eta {format_duration(eta_s) or '?'}" + _losses_text(losses, ", "), refresh=False)
        bar.update(max(step - bar.n, 0))  # redraws at most every mininterval

    # ---- file or pipe -----------------------------------------------------------------------------------------------

    def _maybe_line(self, new_stage, stage, step, total, losses, eta_s) -> None:
        now = self.clock()
        if new_stage:
            self._last_step = -1
        every = max(1, int(total * self.line_every))
        due = (new_stage or step >= total or step // every != self._last_step // every
               or now - self._last_line_t >= self.line_interval_s)
        if not due or step == self._last_step:
            return
        self._last_step, self._last_line_t = step, now
        percent = 100.0 * step / total if total else 100.0
        self.stream.write(f"{stage} {step}/{total} ({percent:.0f}%) eta {format_duration(eta_s) or '?'}"
                          f"{_losses_text(losses, ' ')}\n")
        self.stream.flush()


def _losses_text(losses: dict[str, float | None], sep: str) -> str:
    return "".join(f"{sep}{k}={v:.4g}" for k, v in losses.items() if v is not None)
