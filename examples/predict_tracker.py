"""Predict where points of an image move under an instruction, with a saved tracker.

Loads a model written by ``train_tracker.py`` or ``DiffusionIntentTracker.save_pretrained``
and samples the future tracks of a grid of query points or of points from a file. It draws
them on the image coloured by time step and writes the tracks next to the picture:

    python examples/predict_tracker.py --model outputs/train_tracker/model \\
        --image scene.png --text "push the red cube to the left" --out prediction.png

writes ``prediction.png`` and ``prediction.json`` (or ``prediction.npz`` with
``--format npz``). Coordinates are pixels of the input image, origin at the top-left corner,
x to the right and y down. An image of another size than the model's is resized for the
model, and the tracks are scaled back to the input image.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger("predict_tracker")

POINT_FILE_SUFFIXES = (".json", ".npy", ".txt", ".csv")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        description="Draw the future point tracks that a trained tracker predicts for an "
        "image and an instruction.",
    )
    parser.add_argument("--model", required=True, type=Path, help="folder of the saved model")
    parser.add_argument("--image", required=True, type=Path, help="RGB image (PNG or JPEG)")
    parser.add_argument("--text", required=True, help="instruction, e.g. 'lift the red cube'")
    parser.add_argument(
        "--depth", type=Path, help="depth map in metres as a .npy array of shape (H, W)"
    )
    parser.add_argument(
        "--points",
        default="grid:8",
        help="query points: 'grid:K' for a K x K grid over the image, or a .json, .npy, .txt "
        "or .csv file of (x, y) pixel rows (default: grid:8)",
    )

    parser.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="classifier-free guidance scale; 1 turns guidance off and models trained "
        "without text dropout ignore it (default: 1.0)",
    )
    parser.add_argument("--steps", type=int, default=20, help="DDIM sampling steps (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument(
        "--device", default="cpu", help="torch device of the model, e.g. cpu or cuda"
    )

    parser.add_argument(
        "--format",
        choices=("json", "npz"),
        default="json",
        help="file format of the tracks written next to --out (default: json)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output picture (.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the predictor; input errors exit through ``parser.error`` with a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    _check_arguments(parser, args)
    image = _load_image(parser, args.image)
    height, width = image.shape[:2]
    points = _parse_points(parser, args.points, width, height)
    depth = _load_depth(parser, args.depth, width, height) if args.depth else None

    import torch

    from tracker.model import DiffusionIntentTracker
    from tracker.pretrained import IncompatibleCheckpointError

    try:
        model = DiffusionIntentTracker.from_pretrained(args.model, map_location=args.device)
    except (FileNotFoundError, IncompatibleCheckpointError, OSError) as error:
        parser.error(f"could not load the model from {args.model}: {error}")

    size = model.config.image_size
    if model.config.use_depth and depth is None:
        parser.error(
            f"the model was trained with depth; pass --depth with a ({height}, "
            f"{width}) .npy depth map in metres"
        )
    if depth is not None and not model.config.use_depth:
        logger.warning("The model was trained without depth; --depth is ignored.")
        depth = None

    frames = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
    scale = torch.tensor([size / width, size / height])
    if (width, height) != (size, size):
        logger.info(
            "Resizing the image from %dx%d to the model's %dx%d; tracks are scaled back.",
            width,
            height,
            size,
            size,
        )
        frames = torch.nn.functional.interpolate(
            frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    depth_tensor = None
    if depth is not None:
        depth_tensor = torch.from_numpy(depth)[None, None].float()
        depth_tensor = torch.nn.functional.interpolate(
            depth_tensor, size=(size, size), mode="nearest"
        )

    queries = torch.from_numpy(points).float()[None] * scale  # model pixels
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    result = model.predict(
        frames.to(args.device),
        queries.to(args.device),
        args.text,
        depth=None if depth_tensor is None else depth_tensor.to(args.device),
        guidance_scale=args.guidance,
        num_inference_steps=args.steps,
        generator=generator,
    )
    tracks = (result["tracks"][0].cpu() / scale).numpy()  # (N, T + 1, 2) input-image pixels
    tracks[:, 0] = points  # slot 0 is the query itself; avoid rounding from the scaling

    data_path = args.out.with_suffix(f".{args.format}")
    _draw(image, tracks, args.text, args.out)
    _write_tracks(data_path, tracks, points, args)
    print(f"Wrote {args.out} and {data_path} ({len(points)} tracks of {tracks.shape[1]} slots).")
    return 0


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.model.is_dir():
        parser.error(f"--model {args.model} is not a folder; pass the folder of a saved model")
    if not args.image.is_file():
        parser.error(f"--image {args.image} does not exist")
    if args.depth is not None and not args.depth.is_file():
        parser.error(f"--depth {args.depth} does not exist")
    if not args.text.strip():
        parser.error("--text is empty; give an instruction such as 'lift the red cube'")
    if args.steps <= 0:
        parser.error(f"--steps must be positive, got {args.steps}")
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out {args.out} must end in .png")
    if not args.out.parent.is_dir():
        parser.error(f"the folder of --out, {args.out.parent}, does not exist")


def _load_image(parser: argparse.ArgumentParser, path: Path) -> np.ndarray:
    """Return the image as (H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        parser.error(f"--image {path} is not a readable image: {error}")


def _parse_points(
    parser: argparse.ArgumentParser, spec: str, width: int, height: int
) -> np.ndarray:
    """Return (N, 2) query points in pixels of the input image."""
    if spec.startswith("grid:"):
        count = spec.removeprefix("grid:")
        if not count.isdigit() or not 1 <= int(count) <= 64:
            parser.error(f"--points {spec!r} is invalid; use grid:K with K from 1 to 64")
        k = int(count)
        xs = (np.arange(k) + 0.5) * width / k
        ys = (np.arange(k) + 0.5) * height / k
        grid_x, grid_y = np.meshgrid(xs, ys)
        return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float32)

    path = Path(spec)
    if path.suffix.lower() not in POINT_FILE_SUFFIXES:
        parser.error(
            f"--points {spec!r} is neither grid:K nor a {'/'.join(POINT_FILE_SUFFIXES)} file"
        )
    if not path.is_file():
        parser.error(f"--points file {path} does not exist")
    try:
        if path.suffix.lower() == ".json":
            points = np.asarray(json.loads(path.read_text()), dtype=np.float32)
        elif path.suffix.lower() == ".npy":
            points = np.load(path, allow_pickle=False).astype(np.float32)
        else:
            points = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
            points = points.astype(np.float32)
    except (ValueError, OSError, json.JSONDecodeError) as error:
        parser.error(f"--points file {path} could not be read: {error}")

    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        parser.error(
            f"--points file {path} must hold N >= 1 rows of (x, y), got shape {points.shape}"
        )
    inside = (
        np.isfinite(points).all(axis=1)
        & (points[:, 0] >= 0)
        & (points[:, 0] < width)
        & (points[:, 1] >= 0)
        & (points[:, 1] < height)
    )
    if not inside.all():
        bad = np.flatnonzero(~inside)[:5].tolist()
        parser.error(
            f"--points rows {bad} lie outside the {width}x{height} image; coordinates are "
            "pixels with 0 <= x < width and 0 <= y < height"
        )
    return points


def _load_depth(parser: argparse.ArgumentParser, path: Path, width: int, height: int):
    """Return the (H, W) depth map in metres from a .npy file (never unpickled)."""
    try:
        depth = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        parser.error(f"--depth {path} is not a readable .npy array: {error}")
    depth = np.squeeze(depth)
    if depth.shape != (height, width):
        parser.error(
            f"--depth {path} has shape {depth.shape}, expected ({height}, {width}) like the image"
        )
    if not np.isfinite(depth).all():
        parser.error(f"--depth {path} contains NaN or inf; replace invalid values")
    return depth.astype(np.float32)


def _draw(image: np.ndarray, tracks: np.ndarray, text: str, out: Path) -> None:
    """Draw tracks coloured by time step on the image and save the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    height, width = image.shape[:2]
    slots = tracks.shape[1]
    figure, axis = plt.subplots(figsize=(6, 6 * height / width))
    axis.imshow(image)
    segments = np.stack([tracks[:, :-1], tracks[:, 1:]], axis=2).reshape(-1, 2, 2)
    steps = np.tile(np.arange(1, slots), len(tracks))
    lines = LineCollection(segments, cmap="viridis", linewidths=1.5)
    lines.set_array(steps)
    lines.set_clim(0, slots - 1)
    axis.add_collection(lines)
    axis.scatter(
        tracks[:, 0, 0],
        tracks[:, 0, 1],
        s=8,
        c="white",
        edgecolors="black",
        linewidths=0.5,
        zorder=3,
    )
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_axis_off()
    axis.set_title(text, fontsize=10)
    figure.colorbar(lines, ax=axis, fraction=0.046, pad=0.04, label="time step")

    temporary = _temporary_path(out)
    try:
        figure.savefig(temporary, dpi=120, bbox_inches="tight", format="png")
        os.replace(temporary, out)
    finally:
        plt.close(figure)
        temporary.unlink(missing_ok=True)


def _write_tracks(path: Path, tracks: np.ndarray, points: np.ndarray, args) -> None:
    """Write the tracks and the run settings as JSON or NPZ, atomically."""
    settings = {
        "instruction": args.text,
        "image": str(args.image),
        "model": str(args.model),
        "guidance_scale": args.guidance,
        "num_inference_steps": args.steps,
        "seed": args.seed,
        "units": "pixels of the input image; origin top-left, x right, y down",
    }
    temporary = _temporary_path(path)
    try:
        if args.format == "json":
            document = dict(settings, query_points=points.tolist(), tracks=tracks.tolist())
            temporary.write_text(json.dumps(document, indent=1) + "\n")
        else:
            with open(temporary, "wb") as handle:
                np.savez(
                    handle,
                    tracks=tracks,
                    query_points=points,
                    settings=np.array(json.dumps(settings)),
                )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _temporary_path(path: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


if __name__ == "__main__":
    sys.exit(main())
