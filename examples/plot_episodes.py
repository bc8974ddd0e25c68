"""Draw a PNG contact sheet of track episodes so a person can check the data by eye.

Each panel shows the first frame, every query point's track coloured from dark (step 0) to
bright (step T) with invisible steps dotted, the hand's path in white, and the instruction as
the title.

Usage, from the repository root:

    python examples/plot_episodes.py data/episodes/train.h5 --out outputs/episodes.png --count 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracker.h5format import EPISODES_GROUP, validate_file


def plot_contact_sheet(
    path: Path, out: Path, count: int = 8, columns: int = 4, first: int = 0
) -> Path:
    """Write a contact sheet of `count` episodes starting at index `first`.

    Args:
        path: An HDF5 file in the track-episode format.
        out: PNG file to write; replaced atomically.
        count: Number of episodes to draw.
        columns: Panels per row.
        first: Index of the first episode.

    Returns:
        The written PNG path.

    Raises:
        ValueError: If `count` or `columns` is not positive or `first` is out of range.
    """
    if count <= 0 or columns <= 0:
        raise ValueError(f"count and columns must be positive, got {count} and {columns}")
    info = validate_file(path)
    if not 0 <= first < len(info.episodes):
        raise ValueError(f"first={first} is outside the {len(info.episodes)} episodes of {path}")

    names = info.episodes[first : first + count]
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    with h5py.File(path, "r") as handle:
        for axis, name in zip(axes.ravel(), names, strict=False):
            _draw_episode(axis, name, handle[EPISODES_GROUP][name])
    for axis in axes.ravel()[len(names) :]:
        axis.axis("off")
    figure.tight_layout()

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".png", dir=out.parent)
    os.close(fd)
    figure.savefig(tmp_name, dpi=110)
    plt.close(figure)
    os.replace(tmp_name, out)
    return out


def _draw_episode(axis: plt.Axes, name: str, group: h5py.Group) -> None:
    rgb = group["rgb"][()]
    height, width = rgb.shape[:2]
    axis.imshow(rgb, extent=(0, width, height, 0))

    tracks = group["tracks"][()]
    visibility = group["visibility"][()] if "visibility" in group else np.ones(tracks.shape[:2])
    steps = tracks.shape[1]
    colormap = plt.get_cmap("plasma")
    for track, visible in zip(tracks, visibility, strict=True):
        segments = np.stack([track[:-1], track[1:]], axis=1)
        colors = colormap(np.linspace(0.0, 1.0, steps - 1))
        styles = ["solid" if v else "dotted" for v in visible[1:]]
        axis.add_collection(
            LineCollection(segments, colors=colors, linewidths=1.0, linestyles=styles)
        )
    axis.scatter(tracks[:, 0, 0], tracks[:, 0, 1], s=4, c="cyan", linewidths=0)

    if "hand_uvd" in group:
        for hand in group["hand_uvd"][()]:
            axis.plot(hand[:, 0], hand[:, 1], color="white", linewidth=1.8, marker=".", ms=3)
            axis.plot(hand[-1, 0], hand[-1, 1], marker="x", color="white", ms=6)

    title = textwrap.fill(str(group.attrs["instruction"]), 34)
    axis.set_title(f"{name}\n{title}", fontsize=8)
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.axis("off")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and write the contact sheet."""
    parser = argparse.ArgumentParser(description="Write a PNG contact sheet of track episodes.")
    parser.add_argument("file", type=Path, help="HDF5 episode file")
    parser.add_argument("--out", type=Path, default=Path("outputs/episodes.png"), help="PNG path")
    parser.add_argument("--count", type=int, default=8, help="episodes to draw")
    parser.add_argument("--columns", type=int, default=4, help="panels per row")
    parser.add_argument("--first", type=int, default=0, help="index of the first episode")
    args = parser.parse_args(argv)
    out = plot_contact_sheet(args.file, args.out, args.count, args.columns, args.first)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
