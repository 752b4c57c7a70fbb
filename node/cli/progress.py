"""Progress bars (tqdm) for long model runs: loss, step rate and ETA on one line.

tqdm writes to stderr and redraws in place on a terminal; in a log file (CI, nohup) it prints
a line every ``mininterval`` seconds instead, so long runs stay readable in both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from segnode.pipeline.training.trainer import StepReport


class StepBar:
    """A ``progress`` callback for ``training.train``: one bar over ``total`` steps."""

    def __init__(self, total: int | None, description: str, mininterval: float = 10.0) -> None:
        """``total`` None: taken from the first report (epochs left × steps per epoch)."""
        self.bar = tqdm(total=total, desc=description, unit="step", mininterval=mininterval)

    def __call__(self, report: StepReport) -> None:
        if self.bar.total is None:
            self.bar.total = (report.epochs - report.epoch + 1) * report.steps
        losses = report.losses
        postfix = {"epoch": f"{report.epoch}/{report.epochs}", "loss": f"{losses['total']:.3f}"}
        postfix["dice"] = f"{losses['dice']:.3f}"
        if "bce" in losses:
            postfix["bce"] = f"{losses['bce']:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def restart(self, message: str) -> None:
        """Print ``message`` and start over (a new fold: its total comes from its first step)."""
        self.bar.write(message)
        self.bar.reset(total=None)

    def close(self) -> None:
        self.bar.close()
