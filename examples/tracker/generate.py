"""Render tabletop manipulation episodes with MuJoCo and write them as HDF5 track files.

Run from examples/ (or through examples/generate_episodes.py):

    python -m tracker.generate --out ../data/episodes --workers 2

Each episode: a scene of 3 to 5 objects, an instruction, and the scripted gripper executing it
through real contacts. The record contains the first frame (RGB and depth), the 2D tracks of N query
points over T + 1 steps with visibility from a depth test, the hand's image-plane position,
depth and 6D rotation, and the camera. docs/hdf5-format.md describes the fields.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EpisodeConfig", "configure_gl", "generate_episode", "generate_split", "main"]

logger = logging.getLogger(__name__)

SPLITS = {"train": 0, "val": 1, "heldout": 2}


@dataclass(frozen=True)
class EpisodeConfig:
    """Sizes of one episode.

    Attributes:
        image_size: Side of the square frames in pixels.
        num_steps: T; tracks have T + 1 slots, slot 0 being the observed frame.
        num_points: N query points per episode.
        step_seconds: Simulated seconds between two track slots.
        min_objects: Minimum number of objects in a scene.
        max_objects: Maximum number of objects in a scene.
    """

    image_size: int = 128
    num_steps: int = 16
    num_points: int = 64
    step_seconds: float = 0.15
    min_objects: int = 3
    max_objects: int = 5

    def __post_init__(self) -> None:
        for name in ("image_size", "num_steps", "num_points"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(
                "expected 1 <= min_objects <= max_objects <= 6, got "
                f"min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        if self.step_seconds <= 0:
            raise ValueError(f"step_seconds must be positive, got {self.step_seconds}")


def episode_seed(base_seed: int, split: str, index: int) -> int:
    """Derive the seed of one episode, independent of worker count and order."""
    sequence = np.random.SeedSequence([base_seed, SPLITS[split], index])
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def generate_episode(
    seed: int, split: str, config: EpisodeConfig, target: int | None = None
) -> dict[str, Any]:
    """Simulate and render one episode.

    Args:
        seed: Episode seed; the same seed gives byte-identical arrays.
        split: "train", "val" or "heldout". The held-out split names held-out colour-shape
            pairs with held-out phrasings.
        config: Episode sizes.
        target: Object index the task must move, or None to let the seed choose. The same
            seed with another target gives the same initial scene with another instruction.

    Returns:
        {"arrays": field -> array, "attrs": attribute -> value} in the HDF5 format's names.
    """
    from .simulation import simulate_episode

    return simulate_episode(seed, split, config, target)


def generate_split(
    out_path: Path,
    split: str,
    count: int,
    base_seed: int,
    config: EpisodeConfig,
    workers: int,
) -> float:
    """Generate `count` episodes of one split in worker processes and write one HDF5 file.

    Returns:
        Wall-clock seconds spent.
    """
    from tqdm import tqdm

    from .h5format import H5EpisodeWriter

    start = time.perf_counter()
    jobs = [(episode_seed(base_seed, split, i), split, config) for i in range(count)]
    attrs = {
        "generator": f"tracker.generate (MuJoCo {_mujoco_version()})",
        "split": split,
        "base_seed": base_seed,
        "step_seconds": config.step_seconds,
    }
    size = (config.image_size, config.image_size)
    with H5EpisodeWriter(out_path, size, config.num_steps, config.num_points, attrs) as writer:
        for i, episode in enumerate(
            tqdm(_run_jobs(jobs, workers), total=count, desc=split, unit="episode")
        ):
            writer.write(f"{split}-{i:06d}", episode["arrays"], episode["attrs"])
    return time.perf_counter() - start


def _run_jobs(jobs: list[tuple[int, str, EpisodeConfig]], workers: int):
    if workers <= 1:
        for job in jobs:
            yield _job(job)
        return
    # Spawned workers start without the parent's state, so no GL context is ever shared.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=configure_gl) as pool:
        yield from pool.imap(_job, jobs, chunksize=1)


def _job(job: tuple[int, str, EpisodeConfig]) -> dict[str, Any]:
    seed, split, config = job
    return generate_episode(seed, split, config)


def configure_gl() -> None:
    """Select headless EGL rendering when no display is present and nothing chose a backend."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
        logger.info("no display found; rendering headless with MUJOCO_GL=egl")


# Kept for callers that imported the earlier private name.
_configure_gl = configure_gl


def _mujoco_version() -> str:
    import mujoco

    return mujoco.__version__


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tracker.generate",
        description="Render MuJoCo tabletop episodes with point tracks and hand poses as HDF5.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory for <split>.h5")
    parser.add_argument("--train", type=int, default=384, help="training episodes")
    parser.add_argument("--val", type=int, default=64, help="validation episodes (new scenes)")
    parser.add_argument(
        "--heldout",
        type=int,
        default=64,
        help="episodes with held-out phrasings and colour-shape pairs",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the whole set")
    parser.add_argument(
        "--workers", type=int, default=max(1, os.cpu_count() or 1), help="worker processes"
    )
    parser.add_argument("--image-size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--steps", type=int, default=16, help="future steps T (T + 1 slots)")
    parser.add_argument("--points", type=int, default=64, help="query points N per episode")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Generate the train, val and heldout splits into `--out`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    configure_gl()
    config = EpisodeConfig(image_size=args.image_size, num_steps=args.steps, num_points=args.points)
    logger.info("episode config %s, %d workers", asdict(config), args.workers)

    total = 0.0
    for split in SPLITS:
        count = getattr(args, split)
        if count <= 0:
            continue
        out_path = args.out / f"{split}.h5"
        seconds = generate_split(out_path, split, count, args.seed, config, args.workers)
        total += seconds
        print(f"{out_path}: {count} episodes in {seconds:.1f} s")
    print(f"total {total:.1f} s")


if __name__ == "__main__":
    main()
