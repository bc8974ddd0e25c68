"""Training configuration of the tracker: YAML files with inheritance and command-line overrides.

A config file is YAML whose sections mirror the dataclasses below. A file may start from
another one with ``base_config: other.yaml`` (a path relative to the file), and every key it
sets replaces the inherited value. Overrides from the command line use dotted keys,
``train.learning_rate=1e-4``, and their values are parsed as YAML (``true``, ``[1, 2]``,
``null``). Every key is checked against the schema: an unknown or misspelt key raises
``ConfigError`` naming the key and the closest valid key.

Examples:
    >>> config = load_config("examples/configs/train_tracker.yaml", ["train.max_steps=10"])
    >>> config.train.max_steps
    10
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CheckpointConfig",
    "ClassifierFreeGuidanceConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GenerateConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "load_yaml_with_bases",
    "save_config",
]

BASE_CONFIG_KEY = "base_config"

# Base configs deeper than this are almost certainly a cycle that the path check missed
# (for example through symlinks), so loading stops with an error.
MAX_BASE_DEPTH = 16


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------


@dataclass
class GenerateConfig:
    """Episodes that the MuJoCo generator writes when a split file is missing.

    Attributes:
        train: Training episodes.
        val: Validation episodes (new scenes, training phrasings).
        heldout: Episodes with held-out phrasings and colour-shape pairs.
        seed: Base seed of the generated set.
        workers: Generator processes; 0 uses one per CPU core.
        image_size: Side of the square frames in pixels.
        num_steps: Future steps T of every track.
        num_points: Query points stored per episode.
    """

    train: int = 384
    val: int = 64
    heldout: int = 64
    seed: int = 0
    workers: int = 0
    image_size: int = 128
    num_steps: int = 16
    num_points: int = 64


@dataclass
class DataConfig:
    """Location of the episode splits and settings of the training dataset.

    Attributes:
        dir: Folder with the HDF5 splits, relative to the working directory unless absolute.
        train_file: Training split inside ``dir``.
        val_file: Validation split inside ``dir``, used for validation during training.
        heldout_file: Split with held-out phrasings and colour-shape pairs, evaluated at
            the end when the file exists. An empty string skips it.
        generate_if_missing: Run the MuJoCo episode generator when the training or the
            validation split is missing.
        generate: What the generator writes.
        num_points: Query points sampled per training episode; ``None`` keeps all stored points.
        color_jitter: Strength in [0, 1) of the photometric augmentation of training frames.
        num_workers: DataLoader worker processes for the training split.
    """

    dir: str = "data/episodes"
    train_file: str = "train.h5"
    val_file: str = "val.h5"
    heldout_file: str = "heldout.h5"
    generate_if_missing: bool = True
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    num_points: int | None = None
    color_jitter: float = 0.0
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Size preset and architecture overrides of the tracker.

    Attributes:
        size: Size preset of ``TrackerConfig.from_size`` (``demo``, ``s``, ``b``, ``l``).
        overrides: Keyword arguments passed to ``TrackerConfig.from_size`` after the preset.
    """

    size: str = "demo"
    overrides: dict = field(default_factory=dict)


@dataclass
class TrainingConfig:
    """Optimiser, schedule, EMA and precision of the training loop.

    Attributes:
        max_steps: Optimiser steps of the whole run.
        batch_size: Episodes per step on each process.
        learning_rate: Peak AdamW learning rate after warmup.
        vision_lr_scale: Factor on the learning rate of the ViT once it is unfrozen.
        weight_decay: AdamW weight decay.
        adam_betas: AdamW beta coefficients.
        warmup_steps: Steps of linear warmup before the cosine decay to zero.
        max_grad_norm: Gradient clipping threshold on the global L2 norm; 0 disables clipping.
        mixed_precision: ``no``, ``bf16`` or ``fp16``, passed to Accelerate.
        ema_decay: Maximum decay of the exponential moving average of the weights.
        ema_warmup: Ramp the EMA decay up from 0 as ``1 - (1 + step) ** -ema_power``,
            which suits short runs better than a fixed decay.
        ema_power: Exponent of the EMA decay ramp.
        unfreeze_after: Fraction of ``max_steps`` after which the ViT is trained too;
            1.0 keeps it frozen for the whole run.
        log_every_steps: Steps between two records of the training losses.
    """

    max_steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-4
    vision_lr_scale: float = 0.1
    weight_decay: float = 0.01
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ema_power: float = 0.75
    unfreeze_after: float = 1.0
    log_every_steps: int = 10


@dataclass
class ClassifierFreeGuidanceConfig:
    """Text dropout in training and guidance in validation; used only when ``enable_cfg``.

    Attributes:
        dropout_prob: Probability of replacing a sample's instruction with the null token.
        guidance_scale: Guidance scale of the headline validation metrics.
        guidance_sweep: Guidance scales evaluated at the end of a run with CFG.
    """

    dropout_prob: float = 0.0
    guidance_scale: float = 1.0
    guidance_sweep: list = field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0])


@dataclass
class EvalConfig:
    """Validation during and after training.

    Attributes:
        every_steps: Steps between two validations with the EMA weights; 0 disables them.
        at_end: Evaluate the final EMA weights and draw the pictures when training ends.
        num_episodes: Episodes of each split that are evaluated; 0 evaluates all of them.
        num_points: Query points per evaluated episode, drawn once with ``seed``; ``None``
            evaluates all stored points.
        batch_size: Episodes per sampling batch.
        num_inference_steps: DDIM steps per prediction.
        moving_threshold_px: A point is moving when the maximum over steps of the norm of
            its ground-truth displacement exceeds this many pixels.
        num_plot_episodes: Validation episodes drawn with their tracks at the end.
        seed: Seed of the sampling noise and of the evaluated query points, so that every
            validation uses the same noise and points.
    """

    every_steps: int = 250
    at_end: bool = True
    num_episodes: int = 64
    num_points: int | None = None
    batch_size: int = 32
    num_inference_steps: int = 20
    moving_threshold_px: float = 2.0
    num_plot_episodes: int = 4
    seed: int = 1234


@dataclass
class CheckpointConfig:
    """Checkpoints for ``--resume``.

    Attributes:
        every_steps: Steps between two checkpoints; 0 saves only the final one.
        keep_last: Number of most recent checkpoints kept on disk.
    """

    every_steps: int = 250
    keep_last: int = 2


@dataclass
class TrainConfig:
    """The resolved configuration of one training run.

    Attributes:
        seed: Seed of model initialisation, data order and diffusion noise.
        output_dir: Folder of checkpoints, logs, metrics, pictures and the released model.
        enable_cfg: Train with text dropout and evaluate with classifier-free guidance.
        data: Episodes.
        model: Tracker size.
        train: Optimisation.
        cfg: Classifier-free guidance settings, used only when ``enable_cfg`` is true.
        eval: Validation.
        checkpoint: Checkpointing.
    """

    seed: int = 0
    output_dir: str = "outputs/train_tracker"
    enable_cfg: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    cfg: ClassifierFreeGuidanceConfig = field(default_factory=ClassifierFreeGuidanceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        validate_config(self)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike | None = None, overrides: Iterable[str] = ()
) -> TrainConfig:
    """Load a YAML config with its base configs, apply overrides and validate the result.

    Args:
        path: YAML file; ``None`` starts from the schema defaults.
        overrides: ``key=value`` strings with dotted keys, applied in order after the file.

    Returns:
        The resolved config.

    Raises:
        ConfigError: On a missing or malformed file, a cycle of base configs, an unknown key
            (the message names the closest valid key), a value of the wrong type or an
            inconsistent combination of values.
    """
    raw = load_yaml_with_bases(path) if path is not None else {}
    overrides = list(overrides)
    source = str(path) if path is not None else "the defaults"
    raw = apply_overrides(raw, overrides)
    if overrides:
        source = f"{source} with overrides {' '.join(overrides)}"
    return build_config(raw, source=source)


def load_yaml_with_bases(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config and merge it over the chain of files named by ``base_config``.

    Args:
        path: The YAML file.

    Returns:
        The merged mapping, without ``base_config`` keys.

    Raises:
        ConfigError: When a file is missing, is not a YAML mapping, or the chain has a cycle.
    """
    path = Path(path).resolve()
    if path in _seen or len(_seen) >= MAX_BASE_DEPTH:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"base_config chain has a cycle or is too deep: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Pass an existing YAML file.")

    try:
        with path.open(encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must contain a YAML mapping at the top level, "
            f"got {type(data).__name__}."
        )

    base = data.pop(BASE_CONFIG_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{BASE_CONFIG_KEY} in {path} must be a file path, got {base!r}.")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    merged = load_yaml_with_bases(base_path, (*_seen, path))
    return deep_merge(merged, data)


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """Return ``base`` with ``update`` merged in; nested mappings merge key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(raw: Mapping, overrides: Iterable[str]) -> dict:
    """Apply ``key=value`` overrides with dotted keys to a raw config mapping.

    Values are parsed as YAML, so ``x=3`` is an int, ``x=true`` a bool and ``x=[1, 2]`` a list.

    Raises:
        ConfigError: When an override has no ``=`` or an empty key, or when a key is unknown.
    """
    result = dict(raw)
    for override in overrides:
        key, separator, text = override.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(
                f"invalid override {override!r}: expected key=value with a dotted key, "
                "for example train.learning_rate=1e-4."
            )
        if key == BASE_CONFIG_KEY:
            raise ConfigError(
                f"{BASE_CONFIG_KEY} cannot be overridden on the command line; "
                "pass the file with --config instead."
            )
        check_key_path(key.split("."), source=f"override {override!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as error:
            message = f"value of override {override!r} is not valid YAML: {error}"
            raise ConfigError(message) from error
        result = set_dotted(result, key.split("."), value)
    return result


def set_dotted(raw: Mapping, parts: Sequence[str], value: Any) -> dict:
    """Return a copy of ``raw`` with the nested key ``parts`` set to ``value``."""
    result = dict(raw)
    head, rest = parts[0], parts[1:]
    if not rest:
        result[head] = value
        return result
    child = result.get(head)
    result[head] = set_dotted(child if isinstance(child, Mapping) else {}, rest, value)
    return result


# ---------------------------------------------------------------------------
# Validation against the schema
# ---------------------------------------------------------------------------


def valid_keys(schema: type = TrainConfig, prefix: str = "") -> list[str]:
    """List every dotted key of the schema, sections and leaves."""
    keys = []
    hints = typing.get_type_hints(schema)
    for item in dataclasses.fields(schema):
        dotted = f"{prefix}{item.name}"
        keys.append(dotted)
        if dataclasses.is_dataclass(hints[item.name]):
            keys.extend(valid_keys(hints[item.name], f"{dotted}."))
    return keys


def unknown_key_message(key: str, source: str) -> str:
    """Describe an unknown key with the closest valid key, found with difflib."""
    candidates = valid_keys()
    matches = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not matches:
        leaf = key.rsplit(".", 1)[-1]
        leaves = {candidate.rsplit(".", 1)[-1]: candidate for candidate in candidates}
        leaf_matches = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        matches = [leaves[leaf_matches[0]]] if leaf_matches else []
    hint = f" Did you mean {matches[0]!r}?" if matches else ""
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [c for c in candidates if c.startswith(section) and "." not in c[len(section) :]]
    return f"unknown config key {key!r} in {source}.{hint} Valid keys here: {', '.join(siblings)}."


def check_key_path(parts: Sequence[str], source: str) -> None:
    """Raise ConfigError unless the dotted key exists in the schema or in a free-form dict."""
    schema: Any = TrainConfig
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(schema):
            return  # below a free-form dict field such as model.overrides
        hints = typing.get_type_hints(schema)
        if part not in hints:
            raise ConfigError(unknown_key_message(".".join(parts[: depth + 1]), source))
        schema = hints[part]


def build_config(raw: Mapping, source: str) -> TrainConfig:
    """Build and validate a ``TrainConfig`` from a merged raw mapping."""
    return build_section(TrainConfig, raw, prefix="", source=source)


def build_section(schema: type, raw: Any, prefix: str, source: str) -> Any:
    """Build one dataclass section, checking keys and coercing values to the field types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"config section {prefix.rstrip('.') or 'root'} in {source} must be a mapping, "
            f"got {raw!r}."
        )

    hints = typing.get_type_hints(schema)
    for key in raw:
        if key not in hints:
            raise ConfigError(unknown_key_message(f"{prefix}{key}", source))

    values = {}
    for name, value in raw.items():
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            values[name] = build_section(expected, value, f"{prefix}{name}.", source)
        else:
            values[name] = coerce_value(value, expected, f"{prefix}{name}", source)

    try:
        return schema(**values)
    except ConfigError as error:
        raise ConfigError(f"{error} (in {source})") from None


def coerce_value(value: Any, expected: Any, key: str, source: str) -> Any:
    """Check ``value`` against a field type, converting ints and numeric strings to float.

    PyYAML reads ``3e-4`` (no dot) as a string, so numeric strings are accepted for floats.
    """
    allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    if value is None and type(None) in allowed:
        return None

    for kind in allowed:
        if kind is type(None):
            continue
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if kind is str and isinstance(value, str):
            return value
        if kind in (list, dict) and isinstance(value, kind):
            return value

    names = " or ".join(kind.__name__ for kind in allowed)
    raise ConfigError(
        f"config key {key!r} in {source} must be {names}, got {value!r} "
        f"({type(value).__name__})."
    )


def validate_config(config: TrainConfig) -> None:
    """Raise ConfigError on values that are individually valid but wrong together or in range."""
    train, cfg, evaluation = config.train, config.cfg, config.eval

    if train.max_steps < 1:
        raise ConfigError(f"train.max_steps must be at least 1, got {train.max_steps}.")
    if train.batch_size < 1:
        raise ConfigError(f"train.batch_size must be at least 1, got {train.batch_size}.")
    if train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate must be positive, got {train.learning_rate}.")
    if train.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps must be >= 0, got {train.warmup_steps}.")
    if train.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(
            f"train.mixed_precision must be 'no', 'bf16' or 'fp16', got {train.mixed_precision!r}."
        )
    if not 0.0 <= train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {train.ema_decay}.")
    if not 0.0 <= train.unfreeze_after <= 1.0:
        raise ConfigError(
            f"train.unfreeze_after is a fraction of train.max_steps and must be in [0, 1], "
            f"got {train.unfreeze_after}."
        )
    if len(train.adam_betas) != 2:
        raise ConfigError(f"train.adam_betas must have two values, got {train.adam_betas}.")

    if not 0.0 <= cfg.dropout_prob < 1.0:
        raise ConfigError(f"cfg.dropout_prob must be in [0, 1), got {cfg.dropout_prob}.")
    if config.enable_cfg and cfg.dropout_prob == 0.0:
        raise ConfigError(
            "enable_cfg is true but cfg.dropout_prob is 0, so the model would never learn the "
            "unconditional branch. Set cfg.dropout_prob (for example 0.1)."
        )
    if not config.enable_cfg and (cfg.dropout_prob > 0.0 or cfg.guidance_scale != 1.0):
        raise ConfigError(
            f"cfg.dropout_prob={cfg.dropout_prob} and cfg.guidance_scale={cfg.guidance_scale} "
            "take effect only with classifier-free guidance. Set enable_cfg=true, or reset "
            "them to 0 and 1."
        )
    if not cfg.guidance_sweep:
        raise ConfigError("cfg.guidance_sweep must list at least one guidance scale.")

    for key, value in (
        ("eval.every_steps", evaluation.every_steps),
        ("eval.num_episodes", evaluation.num_episodes),
        ("eval.num_plot_episodes", evaluation.num_plot_episodes),
        ("checkpoint.every_steps", config.checkpoint.every_steps),
        ("data.num_workers", config.data.num_workers),
    ):
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}.")
    if evaluation.batch_size < 1 or evaluation.num_inference_steps < 1:
        raise ConfigError(
            "eval.batch_size and eval.num_inference_steps must be at least 1, got "
            f"{evaluation.batch_size} and {evaluation.num_inference_steps}."
        )
    if config.checkpoint.keep_last < 1:
        raise ConfigError(
            f"checkpoint.keep_last must be at least 1, got {config.checkpoint.keep_last}."
        )


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def config_to_dict(config: TrainConfig) -> dict:
    """Return the config as plain nested dicts, ready for YAML or JSON."""
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically; ``load_config`` reads it back unchanged.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        handle.write(text)
    os.replace(handle.name, path)
    return path
