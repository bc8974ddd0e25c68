"""Atomic training checkpoints on top of ``Accelerator.save_state``.

A checkpoint is the folder ``<root>/step_<step>``. It contains Accelerate's files: the model
weights as safetensors, and the optimiser, scheduler, EMA and RNG states as torch pickles
(one RNG file per process). Next to them are ``trainer_state.json`` (the step and the
running loss sums) and the resolved config as ``config.yaml``.

Every process writes into ``<root>/.tmp-step_<step>`` first. The main process renames the
folder only after all files are complete, so a crash while writing leaves the previous
checkpoint intact and at most a temporary folder, which the next run removes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from .config import TrainConfig, save_config

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE",
    "TRAINER_STATE_FILE",
    "find_latest_checkpoint",
    "load_checkpoint",
    "remove_temporary_checkpoints",
    "save_checkpoint",
]

CONFIG_FILE = "config.yaml"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TEMPORARY_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    """Return the folder name of the checkpoint after ``step`` optimiser steps."""
    return f"step_{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Return the complete checkpoints under ``root`` as (step, folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = CHECKPOINT_PATTERN.match(folder.name)
        if match and (folder / TRAINER_STATE_FILE).is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def find_latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """Return the most recent complete checkpoint under ``root``, or None if there is none."""
    checkpoints = list_checkpoints(root)
    return checkpoints[-1][1] if checkpoints else None


def remove_temporary_checkpoints(root: str | os.PathLike) -> None:
    """Delete temporary folders that a crash during a save left behind."""
    root = Path(root)
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.name.startswith(TEMPORARY_PREFIX) and folder.is_dir():
            logger.warning("removing %s, an incomplete checkpoint of an earlier run", folder)
            shutil.rmtree(folder)


def save_checkpoint(
    accelerator: Accelerator,
    root: str | os.PathLike,
    step: int,
    trainer_state: dict[str, Any],
    config: TrainConfig,
    keep_last: int,
) -> Path:
    """Write a checkpoint atomically and delete all but the ``keep_last`` newest ones.

    Every process must call this function, because each one saves its own RNG state.

    Args:
        accelerator: The run's Accelerator, with the model, optimiser and the registered
            scheduler and EMA.
        root: Folder of the checkpoints.
        step: Optimiser steps done.
        trainer_state: JSON-serialisable loop state of the main process.
        config: The resolved config, saved next to the weights.
        keep_last: Number of newest checkpoints kept.

    Returns:
        The checkpoint folder.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    temporary = root / f"{TEMPORARY_PREFIX}{final.name}"

    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
    accelerator.wait_for_everyone()

    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        save_config(config, temporary / CONFIG_FILE)
        _write_json(temporary / TRAINER_STATE_FILE, {**trainer_state, "step": step})
        _replace_folder(temporary, final)
        for _, folder in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(folder)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: str | os.PathLike) -> dict[str, Any]:
    """Restore model, optimiser, scheduler, EMA and RNG states from a checkpoint folder.

    Returns:
        The trainer state stored with the checkpoint, including ``step``.

    Raises:
        FileNotFoundError: If the folder is not a complete checkpoint.
    """
    folder = Path(folder)
    state_file = folder / TRAINER_STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{folder} is not a complete checkpoint: {TRAINER_STATE_FILE} is missing."
        )
    accelerator.load_state(str(folder))
    return json.loads(state_file.read_text(encoding="utf-8"))


def _replace_folder(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination``, replacing an existing folder of that name."""
    if not destination.exists():
        os.replace(source, destination)
        return
    # Rename the old folder away first, so a checkpoint of this name exists at every moment.
    old = destination.with_name(f"{TEMPORARY_PREFIX}old-{destination.name}")
    if old.exists():
        shutil.rmtree(old)
    os.replace(destination, old)
    os.replace(source, destination)
    shutil.rmtree(old)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        json.dump(data, handle, indent=2)
    os.replace(handle.name, path)
