"""Input checks of the DiffusionIntentTracker, run before any compute.

Every check raises ValueError or TypeError naming the argument, what it received, what is
expected and how to fix it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["check_batch", "check_predict_inputs"]


def check_predict_inputs(
    frames: Any,
    query_coords: Any,
    text: Any,
    depth: Any,
    hand_query: Any,
    image_size: int,
    use_depth: bool,
    guidance_scale: Any,
    num_inference_steps: Any,
    max_hands: int,
) -> list[str]:
    """Check the arguments of ``predict`` and return the instructions as a list of B strings."""
    _check_frames(frames, "frames", image_size)
    batch = frames.shape[0]
    _check_points(query_coords, "query_coords", batch)
    texts = _check_texts(text, "text", batch)
    _check_depth(depth, "depth", batch, image_size, use_depth)

    if hand_query is not None:
        _check_float_tensor(hand_query, "hand_query")
        if (
            hand_query.dim() != 3
            or hand_query.shape[0] != batch
            or hand_query.shape[2] not in (3, 9)
        ):
            raise ValueError(
                f"hand_query must have shape (B={batch}, H, 3) with (u px, v px, depth m) or "
                f"(B, H, 9) with the 6D rotation appended, got {tuple(hand_query.shape)}."
            )
        if not torch.isfinite(hand_query).all():
            raise ValueError("hand_query contains NaN or inf; pass finite hand states.")
        _check_hand_count(hand_query.shape[1], "hand_query", max_hands)

    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise TypeError(f"guidance_scale must be a float, got {type(guidance_scale).__name__}.")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise TypeError(
            f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}."
        )
    if num_inference_steps <= 0:
        raise ValueError(
            f"num_inference_steps must be positive, got {num_inference_steps}; 20 is typical."
        )
    return texts


def check_batch(
    batch: Any,
    image_size: int,
    num_slots: int,
    use_depth: bool,
    use_hands: bool,
    max_hands: int,
) -> None:
    """Check a collated training batch (see the dataset's ``collate_episodes``)."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a dict of tensors, got {type(batch).__name__}.")
    required = ["frames", "query_coords", "track_disp", "instruction"]
    if use_hands:
        required += ["hand_uvd", "hand_rot6d"]
    if use_depth:
        required.append("depth")
    missing = [key for key in required if batch.get(key) is None]
    if missing:
        hint = ""
        if any(key.startswith("hand") for key in missing):
            hint = " Build the model with use_hands=False for data without hands."
        if "depth" in missing:
            hint += " Build the model with use_depth=False for data without depth."
        raise ValueError(f"batch is missing the entries {missing}.{hint}")

    _check_frames(batch["frames"], "batch['frames']", image_size)
    size = batch["frames"].shape[0]
    _check_points(batch["query_coords"], "batch['query_coords']", size)
    _check_texts(batch["instruction"], "batch['instruction']", size)
    _check_depth(batch.get("depth"), "batch['depth']", size, image_size, use_depth)

    num_points = batch["query_coords"].shape[1]
    _check_trajectory(batch["track_disp"], "batch['track_disp']", (size, num_points), num_slots, 2)
    if use_hands:
        hands = batch["hand_uvd"].shape[1] if isinstance(batch["hand_uvd"], torch.Tensor) else -1
        _check_trajectory(batch["hand_uvd"], "batch['hand_uvd']", (size, hands), num_slots, 3)
        _check_trajectory(batch["hand_rot6d"], "batch['hand_rot6d']", (size, hands), num_slots, 6)
        _check_hand_count(hands, "batch['hand_uvd']", max_hands)


def _check_hand_count(count: int, name: str, max_hands: int) -> None:
    if count > max_hands:
        raise ValueError(
            f"{name} has {count} hands but the model has embeddings for {max_hands}; build it "
            f"with max_hands={count} or more."
        )


def _check_float_tensor(value: Any, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {value.dtype}; convert it with "
            f"{name.split('[')[0]}.float()."
        )


def _check_frames(frames: Any, name: str, image_size: int) -> None:
    _check_float_tensor(frames, name)
    expected = (3, image_size, image_size)
    if frames.dim() != 4 or tuple(frames.shape[1:]) != expected:
        raise ValueError(
            f"{name} must have shape (B, 3, {image_size}, {image_size}) with RGB in [0, 1], "
            f"got {tuple(frames.shape)}. Resize the image to the model's image_size."
        )
    if frames.shape[0] == 0:
        raise ValueError(f"{name} has batch size 0; pass at least one frame.")


def _check_points(points: Any, name: str, batch: int) -> None:
    _check_float_tensor(points, name)
    if points.dim() != 3 or points.shape[0] != batch or points.shape[2] != 2:
        raise ValueError(
            f"{name} must have shape (B={batch}, N, 2) with (x, y) pixels, got "
            f"{tuple(points.shape)}."
        )
    if points.shape[1] == 0:
        raise ValueError(f"{name} has no points (N=0); pass at least one query point.")
    if not torch.isfinite(points).all():
        raise ValueError(f"{name} contains NaN or inf; pass finite pixel coordinates.")


def _check_texts(text: Any, name: str, batch: int) -> list[str]:
    if isinstance(text, str):
        text = [text] * batch
    if not isinstance(text, Sequence) or not all(isinstance(item, str) for item in text):
        raise TypeError(f"{name} must be a str or a list of B={batch} str, got {text!r:.80}.")
    if len(text) != batch:
        raise ValueError(f"{name} has {len(text)} instructions but the batch has {batch}.")
    empty = [index for index, item in enumerate(text) if not item.strip()]
    if empty:
        raise ValueError(
            f"{name} has empty instructions at positions {empty}; give every sample an "
            "instruction such as 'push the red cube to the left'."
        )
    return list(text)


def _check_depth(depth: Any, name: str, batch: int, image_size: int, use_depth: bool) -> None:
    if depth is None:
        if use_depth:
            raise ValueError(
                f"{name} is None but the model was built with use_depth=True; pass a "
                f"(B, 1, {image_size}, {image_size}) depth map in metres."
            )
        return
    if not use_depth:
        return
    _check_float_tensor(depth, name)
    if tuple(depth.shape) != (batch, 1, image_size, image_size):
        raise ValueError(
            f"{name} must have shape ({batch}, 1, {image_size}, {image_size}) in metres, got "
            f"{tuple(depth.shape)}."
        )
    if not torch.isfinite(depth).all():
        raise ValueError(f"{name} contains NaN or inf; replace invalid depth with a finite value.")


def _check_trajectory(
    value: Any, name: str, rows: tuple[int, int], num_slots: int, channels: int
) -> None:
    _check_float_tensor(value, name)
    expected = (*rows, num_slots, channels)
    if (
        value.dim() != 4
        or tuple(value.shape[:2]) != rows[:2]
        or tuple(value.shape[2:]) != (num_slots, channels)
    ):
        raise ValueError(
            f"{name} must have shape (B, rows, T + 1, {channels}) = {expected}, got "
            f"{tuple(value.shape)}. T + 1 = {num_slots} comes from the model's num_steps."
        )
