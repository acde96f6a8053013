"""Hooks: callables that ``train()`` calls once per chunk of steps with a ``Chunk``.

A hook returns True to stop training. Library hooks never print on their own: ``Progress`` draws
a rich progress bar only when the CLI (or a user) passes it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


@dataclass
class Chunk:
    """What a hook sees after each kernel call: the records written by that call."""

    step: int  # optimizer steps done so far
    total_steps: int
    steps: pd.DataFrame  # rows of History.steps recorded in this chunk
    nonfinite: bool  # the chunk stopped at a non-finite loss or gradient


class NaNGuard:
    """Stop at the first non-finite loss or gradient and record that step (on by default).

    The guard itself runs inside the kernel — a per-chunk hook would see the failure only after
    the chunk had trained on — so this hook is a switch: ``train(..., nan_guard=True)`` is the
    default, ``NaNGuard()`` among the hooks changes nothing, ``NaNGuard(enabled=False)`` (like
    ``nan_guard=False``) lets training run on through NaN/Inf.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def __call__(self, chunk: Chunk) -> None:
        return None


class EarlyStop:
    """Stop once a recorded loss is at or below ``target_loss``."""

    def __init__(self, target_loss: float) -> None:
        self.target_loss = target_loss

    def __call__(self, chunk: Chunk) -> bool:
        return bool((chunk.steps["loss"] <= self.target_loss).any())


class Progress:
    """A rich progress bar over optimizer steps, showing the last recorded loss."""

    def __init__(self, description: str = "training") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), transient=True,
        )  # fmt: skip
        self.description = description
        self.task = None

    def __call__(self, chunk: Chunk) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=chunk.total_steps, loss="-")
        loss = chunk.steps["loss"].iloc[-1] if len(chunk.steps) else math.nan
        self.bar.update(self.task, completed=chunk.step, loss=f"{loss:.4g}")
        if chunk.step >= chunk.total_steps or chunk.nonfinite:
            self.close()

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()
