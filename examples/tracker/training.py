"""Training loop of the DiffusionIntentTracker with Hugging Face Accelerate.

One function, ``train``, runs a whole job. It finds or generates the episodes and builds the
model. It trains with AdamW, a warmup-then-cosine schedule, gradient clipping and an EMA of
the weights, and validates and checkpoints every few steps. At the end it evaluates the EMA
weights, draws the pictures and saves the released model. The same code runs on one CPU, one GPU or
several processes under ``accelerate launch``.

Resuming is exact on CPU. The data order and the diffusion noise of a step are functions of
(seed, step, process index) alone. The checkpoint contains the model, optimiser, scheduler,
EMA and every RNG state, so a resumed run logs the same losses as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .checkpoints import (
    find_latest_checkpoint,
    load_checkpoint,
    remove_temporary_checkpoints,
    save_checkpoint,
)
from .config import TrainConfig, config_to_dict, save_config
from .dataset import EpisodeDataset, collate_episodes
from .evaluate import evaluate_with_guidance_sweep
from .h5format import EPISODES_GROUP
from .metrics_log import MetricsLogger
from .normalizer import Normalizer

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "TrainResult", "train"]

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
PICTURES_DIR = "pictures"
METRICS_LOG_FILE = "metrics.jsonl"
METRICS_FILE = "metrics.json"


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """Output locations and final metrics of a finished run."""

    output_dir: Path
    model_dir: Path | None
    checkpoint_dir: Path | None
    metrics_file: Path | None
    pictures: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: int = 0


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Run a training job from a resolved config.

    Args:
        config: The resolved configuration.
        resume: Continue from the latest checkpoint in ``<output_dir>/checkpoints``; starts
            from scratch with a warning when there is none.

    Returns:
        The output locations and the final metrics (the metrics only on the main process).

    Raises:
        NonFiniteLossError: When a loss is NaN or infinite; names the step and the episodes.
        FileNotFoundError: When the episodes are missing and generation is disabled.
    """
    accelerator = Accelerator(
        mixed_precision=config.train.mixed_precision,
        # Parameters without a gradient in a step (the null text token without CFG, the ViT
        # while it is frozen) must not stall the gradient all-reduce of DistributedDataParallel.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        # The schedule counts optimiser steps, whatever the number of processes.
        step_scheduler_with_optimizer=False,
    )
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    set_seed(config.seed)

    trainer = Trainer(config, accelerator)
    return trainer.run(resume=resume)


# ---------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------


class EpochItems(Dataset):
    """Dataset view whose items are (epoch, index) pairs, so random draws follow the epoch.

    ``EpisodeDataset`` draws its points and colour jitter from (seed, epoch, index). Passing
    the epoch with each index keeps the draws right in DataLoader workers too.
    """

    def __init__(self, dataset: EpisodeDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) for the optimiser steps ``start_step`` to ``total_steps - 1``.

    Each epoch is a permutation drawn from (seed, epoch). Global batch ``b`` of an epoch takes
    the next ``batch_size * num_processes`` indices, and process ``rank`` takes its slice. The
    incomplete last global batch of an epoch is dropped. The batch of a step therefore depends
    only on the step, which is what makes resuming exact.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_step: int,
        total_steps: int,
        num_processes: int = 1,
        rank: int = 0,
    ) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.num_processes = num_processes
        self.rank = rank
        self.steps_per_epoch = num_items // (batch_size * num_processes)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training split has {num_items} episodes, fewer than one global batch of "
                f"train.batch_size={batch_size} x {num_processes} processes; lower "
                "train.batch_size or generate more episodes."
            )

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        permutation, permutation_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, position = divmod(step, self.steps_per_epoch)
            if epoch != permutation_epoch:
                permutation = self.permutation(epoch)
                permutation_epoch = epoch
            start = (position * self.num_processes + self.rank) * self.batch_size
            indices = permutation[start : start + self.batch_size].tolist()
            yield [(epoch, index) for index in indices]

    def permutation(self, epoch: int) -> torch.Tensor:
        """Return the item order of one epoch."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.num_items, generator=generator)


def derive_seed(*values: int) -> int:
    """Mix integers into one 63-bit seed with NumPy's SeedSequence."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


# ---------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------


class LossModule(nn.Module):
    """Module whose forward returns the tracker's losses.

    DistributedDataParallel synchronises gradients only for work done inside the wrapped
    module's ``forward``, so the loss computation has to run there.
    """

    def __init__(self, tracker: nn.Module) -> None:
        super().__init__()
        self.tracker = tracker

    def forward(
        self, batch: dict[str, Any], cfg_dropout_prob: float, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        return self.tracker.compute_loss(
            batch, cfg_dropout_prob=cfg_dropout_prob, generator=generator
        )


class Trainer:
    """State and steps of one training job; ``train`` is the public entry point."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator) -> None:
        self.config = config
        self.accelerator = accelerator
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / CHECKPOINTS_DIR
        self.pictures_dir = self.output_dir / PICTURES_DIR
        self.step = 0
        self.loss_sums: dict[str, float] = {}
        self.loss_count = 0
        self.vision_trainable = False
        self.last_checkpoint: Path | None = None

    # -- setup ---------------------------------------------------------------

    def run(self, resume: bool) -> TrainResult:
        """Set up, train, evaluate and save; see ``train``."""
        from .data_files import ensure_episodes

        config, accelerator = self.config, self.accelerator
        started = time.perf_counter()

        paths = ensure_episodes(config.data, accelerator)
        self.build_data(paths)
        self.build_model()
        self.build_optimisation()

        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_temporary_checkpoints(self.checkpoint_root)
            save_config(config, self.output_dir / "config.yaml")
        accelerator.wait_for_everyone()

        if resume:
            self.resume_from_latest()
        self.metrics_log = MetricsLogger(
            self.output_dir / METRICS_LOG_FILE,
            resume_step=self.step if resume else None,
            enabled=accelerator.is_main_process,
        )
        self.log_start()

        try:
            self.train_loop()
            result = self.finish(started)
        finally:
            self.metrics_log.close()
        return result

    def build_data(self, paths: dict[str, Path | None]) -> None:
        """Open the splits and fit the displacement normaliser on the training split."""
        data, model = self.config.data, self.config.model
        load_depth = bool(model.overrides.get("use_depth", False))
        self.train_set = EpisodeDataset(
            paths["train"],
            num_points=data.num_points,
            load_depth=load_depth,
            color_jitter=data.color_jitter,
            seed=self.config.seed,
        )
        evaluation = self.config.eval
        self.val_set = EpisodeDataset(
            paths["val"], evaluation.num_points, load_depth=load_depth, seed=evaluation.seed
        )
        self.heldout_set = None
        if paths["heldout"]:
            self.heldout_set = EpisodeDataset(
                paths["heldout"], evaluation.num_points, load_depth=load_depth, seed=evaluation.seed
            )
        self.normalizer = Normalizer.fit(self.train_set)

    def build_model(self) -> None:
        """Build the tracker from the size preset and freeze the encoders that start frozen."""
        from .model import DiffusionIntentTracker
        from .model_config import TrackerConfig

        overrides = dict(self.config.model.overrides)
        height, width = self.train_set.image_size
        if height != width:
            raise ValueError(
                f"the episodes have {height}x{width} frames, but the tracker needs square frames; "
                "resize the frames when converting the episodes."
            )
        overrides.setdefault("image_size", height)
        overrides.setdefault("num_steps", self.train_set.num_steps)
        overrides["trained_with_cfg"] = self.config.enable_cfg
        tracker_config = TrackerConfig.from_size(self.config.model.size, **overrides)
        self.tracker = DiffusionIntentTracker(tracker_config, normalizer=self.normalizer)
        warm_text_cache(self.tracker, [self.train_set, self.val_set, self.heldout_set])

        # DistributedDataParallel registers only the parameters that require a gradient when
        # it wraps the model, so the ViT must be trainable then and is frozen afterwards.
        set_vision_trainable(self.tracker, True)
        self.loss_module = LossModule(self.tracker)
        saved = set(self.tracker.state_dict())
        # The frozen text encoder is neither saved nor averaged.
        self.ema_parameters = [
            parameter
            for name, parameter in self.tracker.named_parameters()
            if name in saved
        ]

    def build_optimisation(self) -> None:
        """Create AdamW, the schedule and the EMA, and hand them to Accelerate."""
        train = self.config.train
        vision_ids = {id(parameter) for parameter in vision_parameters(self.tracker)}
        trainable = [p for p in self.tracker.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if id(p) not in vision_ids]},
            {
                "params": [p for p in trainable if id(p) in vision_ids],
                "lr": train.learning_rate * train.vision_lr_scale,
            },
        ]
        groups = [group for group in groups if group["params"]]
        optimizer = torch.optim.AdamW(
            groups,
            lr=train.learning_rate,
            betas=tuple(train.adam_betas),
            weight_decay=train.weight_decay,
        )
        self.scheduler = get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=train.max_steps
        )
        self.ema = EMAModel(
            self.ema_parameters,
            decay=train.ema_decay,
            use_ema_warmup=train.ema_warmup,
            power=train.ema_power,
        )

        self.model, self.optimizer = self.accelerator.prepare(self.loss_module, optimizer)
        self.ema.to(self.accelerator.device)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.accelerator.register_for_checkpointing(self.ema)

        self.unfreeze_step = (
            math.ceil(train.unfreeze_after * train.max_steps)
            if train.unfreeze_after < 1.0
            else None
        )
        self.update_vision_freezing()

    def resume_from_latest(self) -> None:
        """Load the newest checkpoint, or warn and start from scratch when there is none."""
        latest = find_latest_checkpoint(self.checkpoint_root)
        if latest is None:
            logger.warning(
                "--resume: no checkpoint in %s, starting from step 0", self.checkpoint_root
            )
            return
        state = load_checkpoint(self.accelerator, latest)
        self.step = int(state["step"])
        self.loss_sums = {k: float(v) for k, v in state.get("loss_sums", {}).items()}
        self.loss_count = int(state.get("loss_count", 0))
        self.last_checkpoint = latest
        self.update_vision_freezing()
        logger.info("resumed from %s at step %d", latest, self.step)

    def update_vision_freezing(self) -> None:
        """Freeze the ViT before ``unfreeze_step`` and unfreeze it from then on."""
        trainable = self.unfreeze_step is not None and self.step >= self.unfreeze_step
        if trainable != self.vision_trainable or self.step == 0:
            set_vision_trainable(self.tracker, trainable)
            if trainable and self.step > 0:
                logger.info("step %d: unfreezing the ViT", self.step)
        self.vision_trainable = trainable

    # -- logging -------------------------------------------------------------

    def log_start(self) -> None:
        """Log the resolved config, parameter counts, device and dataset sizes."""
        counts = parameter_counts(self.tracker, self.ema_parameters)
        config_text = yaml.safe_dump(config_to_dict(self.config), sort_keys=False)
        sampler = self.make_sampler()
        heldout = len(self.heldout_set) if self.heldout_set is not None else 0
        logger.info("resolved config:\n%s", config_text.rstrip())
        logger.info(
            "parameters: %s trainable now, %s in the ViT (frozen until step %s), "
            "%s in the frozen text encoder",
            f"{counts['trainable']:,}",
            f"{counts['vision']:,}",
            self.unfreeze_step if self.unfreeze_step is not None else "the end",
            f"{counts['text_encoder']:,}",
        )
        logger.info(
            "device %s, %d process(es), mixed precision %s",
            self.accelerator.device,
            self.accelerator.num_processes,
            self.accelerator.mixed_precision,
        )
        logger.info(
            "episodes: %d train, %d val, %d heldout; %d steps of %d per process "
            "(%d steps per epoch), starting at step %d",
            len(self.train_set),
            len(self.val_set),
            heldout,
            self.config.train.max_steps,
            self.config.train.batch_size,
            sampler.steps_per_epoch,
            self.step,
        )

    # -- training ------------------------------------------------------------

    def make_sampler(self, start_step: int = 0) -> StepBatchSampler:
        return StepBatchSampler(
            len(self.train_set),
            self.config.train.batch_size,
            self.config.seed,
            start_step,
            self.config.train.max_steps,
            num_processes=self.accelerator.num_processes,
            rank=self.accelerator.process_index,
        )

    def train_loop(self) -> None:
        """Run the optimiser steps from the current step to ``train.max_steps``."""
        config, accelerator = self.config, self.accelerator
        loader = DataLoader(
            EpochItems(self.train_set),
            batch_sampler=self.make_sampler(self.step),
            collate_fn=collate_episodes,
            num_workers=config.data.num_workers,
            pin_memory=accelerator.device.type == "cuda",
        )
        progress = tqdm(
            total=config.train.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        window_start = time.perf_counter()
        window_steps = 0

        for batch in loader:
            self.update_vision_freezing()
            losses = self.training_step(batch)
            self.step += 1
            window_steps += 1
            self.accumulate(losses)
            progress.update(1)
            progress.set_postfix(
                loss=f"{losses['total_loss']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}"
            )

            if self.step % config.train.log_every_steps == 0 or self.step == config.train.max_steps:
                elapsed = time.perf_counter() - window_start
                self.log_training(window_steps / elapsed if elapsed > 0 else math.nan)
                window_start, window_steps = time.perf_counter(), 0
            # The final evaluation covers the last step, so it is not validated twice.
            validate_now = config.eval.every_steps and self.step % config.eval.every_steps == 0
            if validate_now and self.step < config.train.max_steps:
                self.validate()
            if config.checkpoint.every_steps and self.step % config.checkpoint.every_steps == 0:
                self.save()
        progress.close()

        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(
            f"{self.step:08d}"
        ):
            self.save()

    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Run one optimiser step and return the losses averaged over processes."""
        config, accelerator = self.config, self.accelerator
        batch = move_to_device(batch, accelerator.device)
        generator = torch.Generator(device=accelerator.device)
        generator.manual_seed(derive_seed(config.seed, self.step, accelerator.process_index))
        dropout = config.cfg.dropout_prob if config.enable_cfg else 0.0

        self.model.train()
        outputs = self.model(batch, cfg_dropout_prob=dropout, generator=generator)
        names = sorted(key for key, value in outputs.items() if isinstance(value, torch.Tensor))
        values = torch.stack([outputs[name].detach().float().reshape(()) for name in names])
        values = accelerator.reduce(values, reduction="mean")
        if not torch.isfinite(values).all():
            self.raise_non_finite(dict(zip(names, values.tolist(), strict=True)), batch)

        accelerator.backward(outputs["total_loss"])
        if not self.vision_trainable:
            # Drop any gradient that reached the frozen ViT, so AdamW does not touch it.
            for parameter in vision_parameters(self.tracker):
                parameter.grad = None
        if config.train.max_grad_norm > 0:
            accelerator.clip_grad_norm_(self.model.parameters(), config.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.ema_parameters)
        return dict(zip(names, values.tolist(), strict=True))

    def raise_non_finite(self, losses: dict[str, float], batch: dict[str, Any]) -> None:
        """Raise NonFiniteLossError naming the step and the episodes of the global batch."""
        episodes = self.accelerator.gather_for_metrics(
            list(batch["episode"]), use_gather_object=True
        )
        values = ", ".join(f"{name}={value}" for name, value in losses.items())
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step + 1} ({values}); the batch held the episodes "
            f"{', '.join(map(str, episodes))}. Lower train.learning_rate, keep "
            "train.max_grad_norm > 0, or check these episodes for extreme values."
        )

    def accumulate(self, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value
        self.loss_count += 1

    def log_training(self, steps_per_second: float) -> None:
        """Write the mean losses since the previous record and reset the sums."""
        record = {name: total / self.loss_count for name, total in self.loss_sums.items()}
        record.update(
            lr=self.scheduler.get_last_lr()[0],
            steps_per_s=steps_per_second,
            vision_trainable=self.vision_trainable,
        )
        self.metrics_log.write("train", self.step, record)
        self.loss_sums, self.loss_count = {}, 0

    def save(self) -> None:
        self.last_checkpoint = save_checkpoint(
            self.accelerator,
            self.checkpoint_root,
            self.step,
            {"loss_sums": self.loss_sums, "loss_count": self.loss_count},
            self.config,
            self.config.checkpoint.keep_last,
        )

    # -- evaluation ----------------------------------------------------------

    def guidance_scale(self) -> float:
        return self.config.cfg.guidance_scale if self.config.enable_cfg else 1.0

    def validate(self) -> None:
        """Evaluate the EMA weights on the validation subset and log the metrics."""
        if self.accelerator.is_main_process:
            results, _ = self.evaluate(self.val_set, [self.guidance_scale()], num_examples=0)
            metrics = results[self.guidance_scale()]
            self.metrics_log.write("val", self.step, metrics)
            logger.info(
                "step %d validation: moving-point ADE %.2f px (zero motion %.2f), "
                "right object %.0f%%, wrong/right instruction ADE %.2f",
                self.step,
                metrics["ade_moving"],
                metrics["zero_motion_ade_moving"],
                100 * metrics.get("right_object_rate", math.nan),
                metrics["wrong_vs_right_instruction_ade_all"],
            )
        self.accelerator.wait_for_everyone()

    def evaluate(self, dataset: EpisodeDataset, scales: list[float], num_examples: int):
        """Evaluate with the EMA weights swapped in, without touching the training RNGs."""
        evaluation = self.config.eval
        with preserved_rng_state(), self.ema_weights():
            return evaluate_with_guidance_sweep(
                self.tracker,
                dataset,
                collate_episodes,
                scales,
                num_episodes=evaluation.num_episodes,
                batch_size=evaluation.batch_size,
                num_inference_steps=evaluation.num_inference_steps,
                moving_threshold_px=evaluation.moving_threshold_px,
                seed=evaluation.seed,
                num_examples=num_examples,
                device=self.accelerator.device,
            )

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Swap the EMA weights into the model for the duration of the block."""
        self.ema.store(self.ema_parameters)
        self.ema.copy_to(self.ema_parameters)
        try:
            yield
        finally:
            self.ema.restore(self.ema_parameters)

    # -- end of the run ------------------------------------------------------

    def finish(self, started: float) -> TrainResult:
        """Evaluate the final EMA weights, draw the pictures and save the released model."""
        from .finish import finish_run

        result = finish_run(self)
        self.accelerator.wait_for_everyone()
        result.steps = self.step
        minutes = (time.perf_counter() - started) / 60
        if self.accelerator.is_main_process:
            logger.info("finished %d steps in %.1f min", self.step, minutes)
            logger.info("checkpoints: %s", self.checkpoint_root)
            logger.info("released model (EMA weights): %s", result.model_dir)
            logger.info("metrics: %s and %s", result.metrics_file, self.metrics_log.path)
            for picture in result.pictures:
                logger.info("picture: %s", picture)
        self.accelerator.end_training()
        return result


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


TEXT_CACHE_CHUNK = 64


def warm_text_cache(tracker: nn.Module, datasets: list[EpisodeDataset | None]) -> None:
    """Encode every instruction of the splits once, in sorted order and fixed-size chunks.

    The frozen encoder's output for a text varies in the last bits with the padding of the
    batch it was first encoded in. Filling the cache up front makes each cached encoding
    independent of the training history, which a bit-exact resume needs, and saves the
    encoder passes during training.
    """
    texts: set[str] = set()
    for dataset in datasets:
        if dataset is None:
            continue
        for path in dataset.files:
            with h5py.File(path, "r") as handle:
                for group in handle[EPISODES_GROUP].values():
                    for key in ("instruction", "alt_instruction"):
                        if group.attrs.get(key):
                            texts.add(str(group.attrs[key]))

    ordered = sorted(texts)
    conditioner = tracker.text
    conditioner.cache_size = max(conditioner.cache_size, len(ordered))
    with torch.no_grad():
        for start in range(0, len(ordered), TEXT_CACHE_CHUNK):
            conditioner.encode(ordered[start : start + TEXT_CACHE_CHUNK])
    logger.info("encoded %d distinct instructions into the text cache", len(ordered))


def vision_parameters(tracker: nn.Module) -> list[nn.Parameter]:
    """Return the ViT weights of the tracker's scene encoder."""
    return list(tracker.scene.vit.parameters())


def set_vision_trainable(tracker: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze the ViT of the tracker."""
    if trainable:
        tracker.unfreeze_vit()
    else:
        tracker.freeze_vit()


def parameter_counts(tracker: nn.Module, saved_parameters: list[nn.Parameter]) -> dict[str, int]:
    """Count trainable, ViT and text-encoder parameters."""
    saved = {id(parameter) for parameter in saved_parameters}
    return {
        "trainable": sum(p.numel() for p in tracker.parameters() if p.requires_grad),
        "vision": sum(p.numel() for p in vision_parameters(tracker)),
        "text_encoder": sum(p.numel() for p in tracker.parameters() if id(p) not in saved),
    }


def move_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch to ``device`` and leave lists of strings as they are."""
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore the Python, NumPy and torch RNG states after the block."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2, allow_nan=True), encoding="utf-8")
    os.replace(temporary, path)
