"""PNG pictures of a training run: predicted tracks, the loss curve and the guidance sweep.

Matplotlib runs on the Agg backend, so the pictures render without a display.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection

from .evaluate import EpisodeExample

__all__ = ["plot_guidance_sweep", "plot_loss_curve", "plot_track_examples"]

TIME_COLORMAP = "viridis"


def plot_track_examples(examples: Sequence[EpisodeExample], path: str | os.PathLike) -> Path:
    """Draw each episode's first frame with ground-truth and predicted tracks side by side.

    Tracks are coloured by future step (dark is early, yellow is late) and the hand path is
    drawn in white with a marker at its start. Each row is titled with the instruction.

    Args:
        examples: Evaluated episodes.
        path: Output PNG file.

    Returns:
        The path written.

    Raises:
        ValueError: If ``examples`` is empty.
    """
    if not examples:
        raise ValueError("examples is empty; evaluate at least one episode before plotting.")

    figure, axes = plt.subplots(
        len(examples), 2, figsize=(8, 4 * len(examples)), squeeze=False, layout="constrained"
    )
    for row, example in enumerate(examples):
        frame = example.frame.permute(1, 2, 0).clamp(0, 1).numpy()
        query = example.query_coords.numpy()
        panels = (
            ("ground truth", example.true_displacement, example.true_hand_uv),
            ("predicted", example.predicted_displacement, example.predicted_hand_uv),
        )
        for column, (label, displacement, hand_uv) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(frame)
            _draw_tracks(axis, query[:, None, :] + displacement.numpy())
            if hand_uv is not None:
                _draw_hand(axis, hand_uv.numpy())
            axis.set_xlim(0, frame.shape[1])
            axis.set_ylim(frame.shape[0], 0)
            axis.set_axis_off()
            axis.set_title(f"{label}: {example.instruction}", fontsize=9, wrap=True)

    figure.suptitle(
        "track colour: future step (dark early, yellow late); white: hand path", fontsize=9
    )
    return _save(figure, path)


def _draw_tracks(axis: plt.Axes, tracks: np.ndarray) -> None:
    """Draw (N, T+1, 2) pixel tracks as segments coloured by step."""
    steps = tracks.shape[1]
    segments = np.stack([tracks[:, :-1], tracks[:, 1:]], axis=2).reshape(-1, 2, 2)
    step_index = np.tile(np.arange(steps - 1), tracks.shape[0])
    lines = LineCollection(segments, cmap=TIME_COLORMAP, linewidths=1.2)
    lines.set_array(step_index / max(steps - 2, 1))
    axis.add_collection(lines)
    axis.scatter(tracks[:, 0, 0], tracks[:, 0, 1], s=4, c="white", linewidths=0)


def _draw_hand(axis: plt.Axes, hand_uv: np.ndarray) -> None:
    """Draw each (T+1, 2) hand path of an (H, T+1, 2) array."""
    for path in hand_uv:
        axis.plot(path[:, 0], path[:, 1], color="white", linewidth=2.0)
        axis.plot(path[0, 0], path[0, 1], marker="o", color="white", markersize=5)


def plot_loss_curve(records: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Draw the training losses against the step, and the validation ADE when present.

    Args:
        records: Metric records as written to the JSONL log: dicts with ``split`` and
            ``step``. Train records carry ``*_loss`` keys, and validation records (``val``
            during training, ``final_val`` at the end) carry ``ade_moving``.
        path: Output PNG file.

    Returns:
        The path written.

    Raises:
        ValueError: If there is no training record.
    """
    train = [record for record in records if record.get("split") == "train"]
    if not train:
        raise ValueError("no training record to plot; the run logged no training step.")
    validation = [
        record
        for record in records
        if record.get("split") in ("val", "final_val") and "ade_moving" in record
    ]

    columns = 2 if validation else 1
    figure, axes = plt.subplots(1, columns, figsize=(6 * columns, 4), layout="constrained")
    axes = np.atleast_1d(axes)
    steps = [record["step"] for record in train]
    for key in ("total_loss", "track_loss", "hand_uvd_loss", "hand_rot_loss"):
        values = [record.get(key, math.nan) for record in train]
        if not all(math.isnan(value) for value in values):
            axes[0].plot(steps, values, label=key)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss (mean since last record)")
    axes[0].legend()
    axes[0].set_title("training loss")

    if validation:
        val_steps = [record["step"] for record in validation]
        axes[1].plot(val_steps, [r["ade_moving"] for r in validation], marker="o", label="model")
        axes[1].plot(
            val_steps,
            [r["zero_motion_ade_moving"] for r in validation],
            linestyle="--",
            label="zero motion",
        )
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("moving-point ADE (px)")
        axes[1].legend()
        axes[1].set_title("validation (EMA weights)")

    return _save(figure, path)


def plot_guidance_sweep(
    results: Mapping[float, Mapping[str, float]], path: str | os.PathLike
) -> Path:
    """Draw the main metrics against the classifier-free guidance scale.

    Args:
        results: Metrics per guidance scale, as returned by ``evaluate_with_guidance_sweep``.
        path: Output PNG file.

    Returns:
        The path written.
    """
    scales = sorted(results)
    panels = (
        ("moving-point ADE (px)", ("ade_moving", "zero_motion_ade_moving")),
        ("right-object rate", ("right_object_rate",)),
        ("wrong / right instruction ADE", ("wrong_vs_right_instruction_ade_all",)),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), layout="constrained")
    for axis, (label, keys) in zip(axes, panels, strict=True):
        for key in keys:
            values = [results[scale].get(key, math.nan) for scale in scales]
            style = "--" if key.startswith("zero_motion") else "-"
            axis.plot(scales, values, marker="o", linestyle=style, label=key)
        axis.set_xlabel("guidance scale")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
    return _save(figure, path)


def _save(figure: plt.Figure, path: str | os.PathLike) -> Path:
    """Write the figure as PNG atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=100, format="png")
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
