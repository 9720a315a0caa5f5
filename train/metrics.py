"""Where a run's numbers go: ``workdir/metrics.jsonl`` (one JSON object per logged step) and TensorBoard
event files (``workdir/tensorboard``, written with tensorboardX). Only process 0 writes.

A resumed run first drops the records of steps after the checkpoint it resumes from (they are about to
be recomputed), in the JSONL file and, through ``purge_step``, in TensorBoard, so each step appears once.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of ``workdir/metrics.jsonl``, in order."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clean(value: Any) -> Any:
    value = float(value) if hasattr(value, "dtype") or isinstance(value, float) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or inf
    return value


class MetricWriter:
    """JSONL and TensorBoard scalars for steps after ``resume_step``."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool, tensorboard: bool, resume_step: int):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            logdir = str(pathlib.Path(workdir) / TENSORBOARD_DIR)
            self.tb = SummaryWriter(logdir=logdir, purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(name, value, global_step=step)

    def write_text(self, step: int, name: str, text: str) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_text(name, text, global_step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()
