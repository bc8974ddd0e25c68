"""Validation metrics of a trained tracker on held-out episodes.

All distances are in pixels of the observation frame and are computed over the future steps
1..T (slot 0 is the query point itself and is pinned). Every step counts, visible or not,
because the simulator records the position of an occluded point too.

- ADE: the mean over points of the mean over steps of the L2 error of the displacement.
- FDE: the mean over points of the L2 error at the last step.
- Moving points: points whose ground-truth displacement norm exceeds ``moving_threshold_px``
  at some step (the maximum over steps is above the threshold).
- Zero-motion baseline: the same errors for a prediction of no motion at all.
- Right-object rate: the fraction of episodes in which the object whose points the model
  moves most (largest mean over its points of the mean predicted displacement norm) is the
  target object of the instruction.
- Instruction sensitivity: ADE of predictions made with ``alt_instruction`` (another
  instruction for the same scene), measured against the true ground truth, divided by the
  ADE with the right instruction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Subset

logger = logging.getLogger(__name__)

__all__ = [
    "EpisodeExample",
    "ErrorSums",
    "evaluate_tracker",
    "evaluate_with_guidance_sweep",
]


@dataclass
class EpisodeExample:
    """One evaluated episode kept for the pictures (CPU tensors, pixels)."""

    episode: str
    instruction: str
    frame: torch.Tensor  # (3, H, W) in [0, 1]
    query_coords: torch.Tensor  # (N, 2)
    true_displacement: torch.Tensor  # (N, T+1, 2)
    predicted_displacement: torch.Tensor  # (N, T+1, 2)
    true_hand_uv: torch.Tensor | None = None  # (H, T+1, 2)
    predicted_hand_uv: torch.Tensor | None = None  # (H, T+1, 2)


@dataclass
class ErrorSums:
    """Running sums of per-point errors, turned into means by ``means``."""

    ade: float = 0.0
    fde: float = 0.0
    count: int = 0

    def add(self, step_errors: torch.Tensor, mask: torch.Tensor) -> None:
        """Add the points selected by ``mask`` (B, N) from ``step_errors`` (B, N, T)."""
        selected = step_errors[mask]
        self.ade += selected.mean(dim=-1).sum().item() if selected.numel() else 0.0
        self.fde += selected[:, -1].sum().item() if selected.numel() else 0.0
        self.count += int(mask.sum().item())

    def means(self) -> tuple[float, float]:
        """Return (ADE, FDE), NaN when no point was added."""
        if self.count == 0:
            return math.nan, math.nan
        return self.ade / self.count, self.fde / self.count


@dataclass
class _Accumulator:
    """Sums over the evaluated episodes for one guidance scale."""

    predicted: dict[str, ErrorSums] = field(
        default_factory=lambda: {name: ErrorSums() for name in ("all", "moving")}
    )
    zero_motion: dict[str, ErrorSums] = field(
        default_factory=lambda: {name: ErrorSums() for name in ("all", "moving")}
    )
    wrong_instruction: dict[str, ErrorSums] = field(
        default_factory=lambda: {name: ErrorSums() for name in ("all", "moving")}
    )
    hand_error_sum: float = 0.0
    hand_count: int = 0
    zero_motion_hand_error_sum: float = 0.0
    right_object: int = 0
    right_object_ground_truth: int = 0
    object_episodes: int = 0
    episodes: int = 0

    def summary(self) -> dict[str, float]:
        """Return the metrics as a flat dict of floats."""
        result: dict[str, float] = {"episodes": float(self.episodes)}
        for subset in ("all", "moving"):
            ade, fde = self.predicted[subset].means()
            zero_ade, zero_fde = self.zero_motion[subset].means()
            wrong_ade, wrong_fde = self.wrong_instruction[subset].means()
            result[f"ade_{subset}"] = ade
            result[f"fde_{subset}"] = fde
            result[f"zero_motion_ade_{subset}"] = zero_ade
            result[f"zero_motion_fde_{subset}"] = zero_fde
            result[f"ade_{subset}_vs_zero_motion"] = _ratio(ade, zero_ade)
            result[f"wrong_instruction_ade_{subset}"] = wrong_ade
            result[f"wrong_instruction_fde_{subset}"] = wrong_fde
            result[f"wrong_vs_right_instruction_ade_{subset}"] = _ratio(wrong_ade, ade)
        result["moving_points"] = float(self.predicted["moving"].count)
        result["points"] = float(self.predicted["all"].count)

        if self.hand_count:
            result["hand_position_error"] = self.hand_error_sum / self.hand_count
            result["zero_motion_hand_position_error"] = (
                self.zero_motion_hand_error_sum / self.hand_count
            )
        if self.object_episodes:
            result["right_object_rate"] = self.right_object / self.object_episodes
            result["right_object_rate_ground_truth"] = (
                self.right_object_ground_truth / self.object_episodes
            )
            result["right_object_episodes"] = float(self.object_episodes)
        return result


def _ratio(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate_with_guidance_sweep(
    model: torch.nn.Module,
    dataset: Dataset,
    collate_fn: Callable,
    guidance_scales: Sequence[float],
    *,
    num_episodes: int = 0,
    batch_size: int = 16,
    num_inference_steps: int = 20,
    moving_threshold_px: float = 2.0,
    seed: int = 0,
    num_examples: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[dict[float, dict[str, float]], list[EpisodeExample]]:
    """Evaluate the tracker on ``dataset`` at several guidance scales.

    The episodes are the first ``num_episodes`` of the dataset (all when 0) in file order,
    so that successive validations compare the same episodes. Each batch is sampled with
    the same noise for every guidance scale and for both instructions.

    Args:
        model: A ``DiffusionIntentTracker`` (or a module with the same ``predict``).
        dataset: Episodes with ``alt_instruction``, ``point_object`` and ``target_object``.
        collate_fn: Function that stacks dataset items into a batch dict.
        guidance_scales: Guidance scales to evaluate; 1.0 means no guidance.
        num_episodes: Number of episodes to evaluate; 0 evaluates all.
        batch_size: Episodes per ``predict`` call.
        num_inference_steps: DDIM steps per prediction.
        moving_threshold_px: Displacement in pixels above which a point counts as moving.
        seed: Seed of the sampling noise.
        num_examples: Episodes of the first batch kept for pictures, at the first scale.
        device: Device of the model.
        progress: Show a tqdm bar over batches.

    Returns:
        A dict from guidance scale to its metrics, and the kept examples.

    Raises:
        ValueError: If ``guidance_scales`` is empty or the dataset is empty.
    """
    if not guidance_scales:
        raise ValueError("guidance_scales is empty; pass at least one scale, for example [1.0].")
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty; it needs at least one episode.")

    count = len(dataset) if num_episodes <= 0 else min(num_episodes, len(dataset))
    subset = Subset(dataset, range(count))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    accumulators = {float(scale): _Accumulator() for scale in guidance_scales}
    examples: list[EpisodeExample] = []

    was_training = model.training
    model.eval()
    try:
        batches = loader
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(loader, desc="evaluate", leave=False)
        for batch_index, batch in enumerate(batches):
            batch = _to_device(batch, device)
            for scale_index, scale in enumerate(accumulators):
                keep = num_examples - len(examples) if scale_index == 0 else 0
                examples.extend(
                    _evaluate_batch(
                        model,
                        batch,
                        accumulators[scale],
                        guidance_scale=scale,
                        num_inference_steps=num_inference_steps,
                        moving_threshold_px=moving_threshold_px,
                        seed=seed + batch_index,
                        num_examples=keep,
                    )
                )
    finally:
        model.train(was_training)

    return {scale: acc.summary() for scale, acc in accumulators.items()}, examples


def evaluate_tracker(
    model: torch.nn.Module,
    dataset: Dataset,
    collate_fn: Callable,
    guidance_scale: float = 1.0,
    **kwargs,
) -> dict[str, float]:
    """Evaluate at one guidance scale; see ``evaluate_with_guidance_sweep`` for the arguments.

    Returns:
        The metrics as a flat dict of floats.
    """
    results, _ = evaluate_with_guidance_sweep(
        model, dataset, collate_fn, [guidance_scale], **kwargs
    )
    return results[float(guidance_scale)]


# ---------------------------------------------------------------------------
# One batch
# ---------------------------------------------------------------------------


def _evaluate_batch(
    model: torch.nn.Module,
    batch: dict,
    accumulator: _Accumulator,
    *,
    guidance_scale: float,
    num_inference_steps: int,
    moving_threshold_px: float,
    seed: int,
    num_examples: int,
) -> list[EpisodeExample]:
    """Predict with the right and the wrong instruction and add the errors to ``accumulator``."""
    query = batch["query_coords"].float()  # (B, N, 2)
    true_disp = batch["track_disp"].float()  # (B, N, T+1, 2)

    right = _predict(model, batch, batch["instruction"], guidance_scale, num_inference_steps, seed)
    wrong = _predict(
        model, batch, batch["alt_instruction"], guidance_scale, num_inference_steps, seed
    )
    right_disp = right["tracks"].float() - query[:, :, None, :]
    wrong_disp = wrong["tracks"].float() - query[:, :, None, :]

    true_norm = true_disp[:, :, 1:].norm(dim=-1)  # (B, N, T)
    masks = {
        "all": torch.ones(true_norm.shape[:2], dtype=torch.bool, device=true_norm.device),
        "moving": true_norm.amax(dim=-1) > moving_threshold_px,
    }
    right_errors = (right_disp - true_disp)[:, :, 1:].norm(dim=-1)
    wrong_errors = (wrong_disp - true_disp)[:, :, 1:].norm(dim=-1)
    for subset, mask in masks.items():
        accumulator.predicted[subset].add(right_errors, mask)
        accumulator.zero_motion[subset].add(true_norm, mask)
        accumulator.wrong_instruction[subset].add(wrong_errors, mask)
    accumulator.episodes += true_disp.shape[0]

    _add_hand_errors(accumulator, batch, right)
    _add_right_object(accumulator, batch, right_disp, true_disp)
    return _keep_examples(batch, right, right_disp, num_examples)


def _predict(
    model: torch.nn.Module,
    batch: dict,
    text: list[str],
    guidance_scale: float,
    num_inference_steps: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Run ``model.predict`` on a batch with a freshly seeded generator."""
    device = batch["frames"].device
    generator = torch.Generator(device=device).manual_seed(seed)
    hand_query = None
    if batch.get("hand_uvd") is not None:
        # The present hand position and rotation, so slot 0 is pinned for both.
        hand_query = torch.cat([batch["hand_uvd"][:, :, 0], batch["hand_rot6d"][:, :, 0]], dim=-1)
    return model.predict(
        batch["frames"],
        batch["query_coords"],
        list(text),
        depth=batch.get("depth"),
        hand_query=hand_query,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        generator=generator,
    )


def _add_hand_errors(accumulator: _Accumulator, batch: dict, prediction: dict) -> None:
    """Add the image-plane (u, v) error of the hand over steps 1..T."""
    true_hand = batch.get("hand_uvd")
    predicted_hand = prediction.get("hand_uvd")
    if true_hand is None or predicted_hand is None:
        return
    true_uv = true_hand[..., 1:, :2].float()  # (B, H, T, 2)
    errors = (predicted_hand[..., 1:, :2].float() - true_uv).norm(dim=-1)
    zero_errors = (true_uv - true_hand[..., :1, :2].float()).norm(dim=-1)
    accumulator.hand_error_sum += errors.mean(dim=-1).sum().item()
    accumulator.zero_motion_hand_error_sum += zero_errors.mean(dim=-1).sum().item()
    accumulator.hand_count += errors.shape[0] * errors.shape[1]


def _add_right_object(
    accumulator: _Accumulator,
    batch: dict,
    predicted_disp: torch.Tensor,
    true_disp: torch.Tensor,
) -> None:
    """Count episodes whose most moved object (predicted, and in the ground truth) is the target."""
    point_object = batch.get("point_object")
    target_object = batch.get("target_object")
    if point_object is None or target_object is None:
        return

    predicted_motion = predicted_disp[:, :, 1:].norm(dim=-1).mean(dim=-1)  # (B, N)
    true_motion = true_disp[:, :, 1:].norm(dim=-1).mean(dim=-1)
    for index in range(point_object.shape[0]):
        objects = point_object[index]
        target = int(target_object[index])
        present = sorted({int(k) for k in objects.tolist() if k >= 0})
        if target not in present:
            continue  # no query point landed on the target, so the episode cannot be judged
        predicted_means = [predicted_motion[index][objects == k].mean().item() for k in present]
        true_means = [true_motion[index][objects == k].mean().item() for k in present]
        accumulator.object_episodes += 1
        accumulator.right_object += int(present[_argmax(predicted_means)] == target)
        accumulator.right_object_ground_truth += int(present[_argmax(true_means)] == target)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _keep_examples(
    batch: dict, prediction: dict, predicted_disp: torch.Tensor, count: int
) -> list[EpisodeExample]:
    """Copy the first ``count`` episodes of the batch to CPU for the pictures."""
    examples = []
    true_hand = batch.get("hand_uvd")
    predicted_hand = prediction.get("hand_uvd")
    for index in range(min(count, predicted_disp.shape[0])):
        examples.append(
            EpisodeExample(
                episode=str(batch["episode"][index]),
                instruction=str(batch["instruction"][index]),
                frame=batch["frames"][index].detach().float().cpu(),
                query_coords=batch["query_coords"][index].detach().float().cpu(),
                true_displacement=batch["track_disp"][index].detach().float().cpu(),
                predicted_displacement=predicted_disp[index].detach().cpu(),
                true_hand_uv=None
                if true_hand is None
                else true_hand[index, ..., :2].detach().float().cpu(),
                predicted_hand_uv=None
                if predicted_hand is None
                else predicted_hand[index, ..., :2].detach().float().cpu(),
            )
        )
    return examples


def _to_device(batch: dict, device: torch.device | str) -> dict:
    return {
        key: value.to(device) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }
