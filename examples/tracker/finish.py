"""End of a training run: final evaluation with the EMA weights, pictures and the released model."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import config_to_dict
from .metrics_log import read_records
from .plots import plot_guidance_sweep, plot_loss_curve, plot_track_examples

if TYPE_CHECKING:
    from .training import Trainer, TrainResult

logger = logging.getLogger(__name__)

__all__ = ["TARGETS", "check_targets", "finish_run"]

# Targets of the default run on held-out episodes: (metric, comparison, threshold).
TARGETS = (
    ("ade_moving_vs_zero_motion", "<=", 0.6),
    ("right_object_rate", ">=", 0.7),
    ("wrong_vs_right_instruction_ade_all", ">=", 1.5),
)


def finish_run(trainer: Trainer) -> TrainResult:
    """Evaluate, draw and save on the main process; other processes return empty results."""
    from .training import METRICS_FILE, MODEL_DIR, TrainResult, write_json

    output_dir = trainer.output_dir
    result = TrainResult(
        output_dir=output_dir,
        model_dir=None,
        checkpoint_dir=trainer.last_checkpoint,
        metrics_file=None,
    )
    if not trainer.accelerator.is_main_process:
        return result

    if trainer.config.eval.at_end:
        metrics, pictures = evaluate_final(trainer)
        result.metrics = metrics
        result.pictures = pictures
        result.metrics_file = output_dir / METRICS_FILE
        write_json(result.metrics_file, metrics)

    result.model_dir = save_released_model(trainer, output_dir / MODEL_DIR)
    return result


def evaluate_final(trainer: Trainer) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate every split, at every guidance scale of the sweep when CFG is on."""
    config = trainer.config
    headline = trainer.guidance_scale()
    scales = sorted({*config.cfg.guidance_sweep, headline}) if config.enable_cfg else [1.0]
    metrics: dict[str, Any] = {"step": trainer.step, "guidance_scale": headline}
    pictures: list[Path] = []

    splits = {"val": trainer.val_set, "heldout": trainer.heldout_set}
    for split, dataset in splits.items():
        if dataset is None:
            continue
        results, examples = trainer.evaluate(
            dataset, scales, num_examples=config.eval.num_plot_episodes
        )
        metrics[split] = results[headline]
        metrics[split]["targets_met"] = check_targets(results[headline])
        if config.enable_cfg:
            metrics.setdefault("guidance_sweep", {})[split] = {
                str(scale): values for scale, values in results.items()
            }
            pictures.append(
                plot_guidance_sweep(results, trainer.pictures_dir / f"guidance_sweep_{split}.png")
            )
        if examples:
            pictures.append(
                plot_track_examples(examples, trainer.pictures_dir / f"tracks_{split}.png")
            )
        trainer.metrics_log.write(f"final_{split}", trainer.step, results[headline])
        log_summary(split, results[headline])

    records = read_records(trainer.metrics_log.path)
    if any(record.get("split") == "train" for record in records):
        pictures.append(plot_loss_curve(records, trainer.pictures_dir / "loss_curve.png"))
    return metrics, pictures


def check_targets(metrics: dict[str, float]) -> dict[str, bool]:
    """Return, for each target of the default run, whether the metrics meet it."""
    met = {}
    for name, comparison, threshold in TARGETS:
        value = metrics.get(name, math.nan)
        if comparison == "<=":
            met[f"{name} <= {threshold}"] = bool(value <= threshold)
        else:
            met[f"{name} >= {threshold}"] = bool(value >= threshold)
    return met


def log_summary(split: str, metrics: dict[str, float]) -> None:
    logger.info(
        "%s: ADE %.2f px (zero motion %.2f), moving-point ADE %.2f px (zero motion %.2f, "
        "ratio %.2f), moving-point FDE %.2f px, hand error %.2f px, right object %.0f%%, "
        "wrong/right instruction ADE %.2f",
        split,
        metrics["ade_all"],
        metrics["zero_motion_ade_all"],
        metrics["ade_moving"],
        metrics["zero_motion_ade_moving"],
        metrics["ade_moving_vs_zero_motion"],
        metrics["fde_moving"],
        metrics.get("hand_position_error", math.nan),
        100 * metrics.get("right_object_rate", math.nan),
        metrics["wrong_vs_right_instruction_ade_all"],
    )


def save_released_model(trainer: Trainer, folder: Path) -> Path:
    """Save the EMA weights and the resolved training config with ``save_pretrained``."""
    with trainer.ema_weights():
        trainer.tracker.save_pretrained(folder, training_config=config_to_dict(trainer.config))
    return folder
