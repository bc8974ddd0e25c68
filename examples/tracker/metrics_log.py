"""Metric records of a training run: a JSONL file, and TensorBoard when it is installed."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["MetricsLogger", "read_records"]


class MetricsLogger:
    """Append one JSON object per record: ``{"split", "step", "time", ...metrics}``.

    On resume, the records after the resumed step (written by the interrupted run after its
    last checkpoint) are dropped first, so the file reads like one uninterrupted run.

    Args:
        path: The JSONL file.
        resume_step: Step of the checkpoint the run resumes from; None starts a new file.
        enabled: Write anything at all; False on processes other than the main one.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None, enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.tensorboard = None
        if not enabled:
            return

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        else:
            earlier = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
            text = "".join(json.dumps(record) + "\n" for record in earlier)
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self.path)
        self.tensorboard = _open_tensorboard(self.path.parent / "tensorboard", resume_step)

    def write(self, split: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Append a record and mirror its numbers to TensorBoard."""
        if not self.enabled:
            return
        record = {"split": split, "step": step, "time": time.time(), **metrics}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for name, value in metrics.items():
                is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if is_number and math.isfinite(value):
                    self.tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the records of a JSONL metrics file; a missing file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # A process killed mid-write leaves a partial last line; it carries no record.
            logger.warning("skipping an incomplete line of %s", path)
    return records


def _open_tensorboard(folder: Path, resume_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; metrics go to the JSONL file only")
        return None
    purge_step = resume_step + 1 if resume_step is not None else None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)
