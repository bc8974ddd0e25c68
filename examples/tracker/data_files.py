"""Locate the episode splits of a training run and generate the missing ones with MuJoCo."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from accelerate import Accelerator

from .config import DataConfig

logger = logging.getLogger(__name__)

__all__ = ["ensure_episodes", "split_paths"]


def split_paths(data: DataConfig) -> dict[str, Path | None]:
    """Return the file of each split ("train", "val", "heldout"); None when a split is off."""
    root = Path(data.dir)
    return {
        "train": root / data.train_file,
        "val": root / data.val_file,
        "heldout": root / data.heldout_file if data.heldout_file else None,
    }


def ensure_episodes(data: DataConfig, accelerator: Accelerator) -> dict[str, Path | None]:
    """Return the split files, generating missing ones on the main process first.

    The held-out split is optional: when it is missing and generation is off, the run goes on
    without it and logs a warning.

    Raises:
        FileNotFoundError: If the training or validation split is missing and
            ``data.generate_if_missing`` is false.
    """
    paths = split_paths(data)
    missing = [split for split, path in paths.items() if path is not None and not path.exists()]

    if missing and not data.generate_if_missing:
        required = [split for split in missing if split != "heldout"]
        if required:
            raise FileNotFoundError(
                f"episode files not found: {', '.join(str(paths[s]) for s in required)}. "
                "Generate them with `python -m tracker.generate --out DIR` from examples/, point "
                "data.dir at your files, or set data.generate_if_missing=true."
            )
        logger.warning("held-out split %s not found; it will not be evaluated", paths["heldout"])
        paths["heldout"] = None
        return paths

    if missing and accelerator.is_main_process:
        generate_splits(data, {split: paths[split] for split in missing})
    accelerator.wait_for_everyone()
    return paths


def generate_splits(data: DataConfig, targets: dict[str, Path]) -> None:
    """Render the requested splits with the MuJoCo episode generator's command line.

    The generator writes ``<split>.h5`` files, so every split must use that file name.

    Raises:
        ValueError: If a requested split has a non-standard file name or a zero episode count.
    """
    from .generate import main as generate_main

    settings = data.generate
    counts = {"train": 0, "val": 0, "heldout": 0}
    for split, path in targets.items():
        count = getattr(settings, split)
        if count <= 0:
            raise ValueError(
                f"data.generate.{split}={count}, but the {split} split {path} is missing; "
                "set a positive episode count or provide the file."
            )
        if path.name != f"{split}.h5":
            raise ValueError(
                f"the {split} split {path} is missing, and the generator can only write "
                f"{split}.h5. Set data.{split}_file="
                f"{split}.h5 or provide the file."
            )
        counts[split] = count

    workers = settings.workers or os.cpu_count() or 1
    logger.info(
        "generating the missing splits %s into %s with %d worker(s): %s",
        ", ".join(targets),
        data.dir,
        workers,
        asdict(settings),
    )
    started = time.perf_counter()
    generate_main(
        [
            "--out", str(Path(data.dir)),
            "--train", str(counts["train"]),
            "--val", str(counts["val"]),
            "--heldout", str(counts["heldout"]),
            "--seed", str(settings.seed),
            "--workers", str(workers),
            "--image-size", str(settings.image_size),
            "--steps", str(settings.num_steps),
            "--points", str(settings.num_points),
        ]
    )
    logger.info("generated the episodes in %.1f s", time.perf_counter() - started)
