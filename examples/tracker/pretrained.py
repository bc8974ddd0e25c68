"""Save and load a DiffusionIntentTracker as a folder of JSON and safetensors files.

A saved model is a folder with:

- ``config.json``: ``{"architecture": "DiffusionIntentTracker", "format_version": 1,
  "tracker": <TrackerConfig fields>}``.
- ``model.safetensors``: every weight and persistent buffer (normaliser statistics included)
  except the frozen text encoder, which is rebuilt from ``tracker.text_encoder`` at load.
- ``training_config.json`` (optional): the trainer's resolved config.

Loading reads only JSON and safetensors, so it never unpickles anything. It raises
``IncompatibleCheckpointError``, whose message names what it found and asks for retraining,
on a checkpoint of the older architecture (SigLIP text-encoder weights or a precomputed
``diffusion_time_emb`` buffer), on pickled weights, and on a config or weights that do not
match this code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .model_config import TrackerConfig

__all__ = [
    "ARCHITECTURE",
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "TRAINING_CONFIG_NAME",
    "WEIGHTS_NAME",
    "IncompatibleCheckpointError",
    "load_tracker",
    "save_tracker",
]

logger = logging.getLogger(__name__)

ARCHITECTURE = "DiffusionIntentTracker"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_CONFIG_NAME = "training_config.json"
PICKLE_WEIGHT_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")

RETRAIN = "This checkpoint cannot be used with this code; retrain the model with it."


class IncompatibleCheckpointError(ValueError):
    """A saved model from another architecture or config. The message names what differs."""


def save_tracker(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    training_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` atomically.

    The files go to a temporary folder next to ``directory``, which is then renamed. An
    existing saved model in ``directory`` is replaced; any other non-empty folder there is
    left alone and raises.

    Args:
        model: A DiffusionIntentTracker.
        directory: Output folder.
        training_config: JSON-serialisable dict; defaults to ``model.training_config``.

    Returns:
        The folder.

    Raises:
        FileExistsError: If ``directory`` is a non-empty folder without ``config.json``.
    """
    directory = Path(directory)
    non_empty = directory.exists() and any(directory.iterdir())
    if non_empty and not (directory / CONFIG_NAME).is_file():
        raise FileExistsError(
            f"{directory} exists and is not a saved tracker (no {CONFIG_NAME}); choose an "
            "empty or new folder."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    if training_config is None:
        training_config = getattr(model, "training_config", None)

    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        # clone() breaks storage sharing between entries, which safetensors does not accept.
        state = {
            k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()
        }
        save_file(state, temporary / WEIGHTS_NAME, metadata={"format": "pt"})
        document = {
            "architecture": ARCHITECTURE,
            "format_version": FORMAT_VERSION,
            "tracker": model.config.to_dict(),
        }
        _write_json(temporary / CONFIG_NAME, document)
        if training_config is not None:
            _write_json(temporary / TRAINING_CONFIG_NAME, training_config)
        _replace_folder(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    logger.info("Saved the tracker to %s (%d tensors).", directory, len(state))
    return directory


def load_tracker(
    model_class: type,
    directory: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    **model_kwargs: Any,
) -> torch.nn.Module:
    """Build ``model_class`` from a folder written by ``save_tracker``.

    Args:
        model_class: DiffusionIntentTracker or a subclass.
        directory: The folder.
        map_location: Device of the loaded model.
        **model_kwargs: Passed to the constructor, for example ``text_tokenizer`` and
            ``text_encoder_model``.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: If the folder, its config or its weights are missing.
        IncompatibleCheckpointError: If the checkpoint does not match this code.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Saved tracker folder {directory} does not exist.")
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        pickled = [name for name in PICKLE_WEIGHT_NAMES if (directory / name).is_file()]
        if pickled:
            raise IncompatibleCheckpointError(
                f"{directory} has pickled weights {pickled} but no {WEIGHTS_NAME}. Pickled "
                f"files are never loaded because unpickling can run arbitrary code. {RETRAIN}"
            )
        raise FileNotFoundError(f"{weights_path} is missing; {directory} is not a saved tracker.")

    with safe_open(weights_path, framework="pt") as handle:
        keys = list(handle.keys())
    _reject_old_architecture(keys, weights_path)
    config = _read_config(directory)

    model = model_class(config, load_vit_weights=False, **model_kwargs)
    state = load_file(weights_path, device="cpu")
    _check_state(model, state, weights_path)
    # The text encoder's weights are not in the file: they were loaded at construction.
    result = model.load_state_dict(state, strict=False)
    encoder_keys = {f"text.encoder.{key}" for key in model.text.encoder.state_dict()}
    not_loaded = sorted(set(result.missing_keys) - encoder_keys)
    if not_loaded or result.unexpected_keys:
        raise IncompatibleCheckpointError(
            f"{weights_path} left tensors unloaded: missing {_shorten(not_loaded)}, unexpected "
            f"{_shorten(sorted(result.unexpected_keys))}. {RETRAIN}"
        )

    training_path = directory / TRAINING_CONFIG_NAME
    if training_path.is_file():
        model.training_config = json.loads(training_path.read_text())
    model.to(map_location)
    model.eval()
    logger.info("Loaded the tracker from %s (size %s).", directory, config.size)
    return model


def _reject_old_architecture(keys: list[str], path: Path) -> None:
    """Raise on weight names of the older SigLIP-based tracker."""
    markers = [
        key
        for key in keys
        if "siglip" in key.lower()
        or "text_encoder.text_model" in key
        or key.split(".")[-1] == "diffusion_time_emb"
    ]
    if markers:
        shown = ", ".join(markers[:3]) + (
            f" and {len(markers) - 3} more" if len(markers) > 3 else ""
        )
        raise IncompatibleCheckpointError(
            f"{path} comes from the older tracker architecture: it has {shown} (a SigLIP text "
            "encoder or a precomputed diffusion_time_emb buffer), while this model uses a "
            f"frozen TextConditioner and a TimestepEmbedder. {RETRAIN}"
        )


def _read_config(directory: Path) -> TrackerConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {directory} is not a saved tracker.")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IncompatibleCheckpointError(
            f"{path} is not valid JSON ({error}). {RETRAIN}"
        ) from None

    architecture = document.get("architecture") if isinstance(document, dict) else None
    if architecture != ARCHITECTURE:
        raise IncompatibleCheckpointError(
            f"{path} describes architecture {architecture!r}, expected {ARCHITECTURE!r}. {RETRAIN}"
        )
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise IncompatibleCheckpointError(
            f"{path} has format_version {version!r}, expected {FORMAT_VERSION}. {RETRAIN}"
        )
    fields = document.get("tracker")
    if not isinstance(fields, dict):
        raise IncompatibleCheckpointError(f"{path} has no 'tracker' config object. {RETRAIN}")
    try:
        return TrackerConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise IncompatibleCheckpointError(
            f"{path} has an incompatible tracker config: {error} {RETRAIN}"
        ) from None


def _check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Compare saved tensors with the model's (text encoder excluded) and raise on a mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {_shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_shorten(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (saved vs config) {_shorten(mismatched)}")
    if problems:
        raise IncompatibleCheckpointError(
            f"{path} does not match the model its config describes: {'; '.join(problems)}. "
            + RETRAIN
        )


def _shorten(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _write_json(path: Path, data: Any) -> None:
    # default=str keeps Paths and similar values of a training config readable.
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _replace_folder(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an existing ``target`` is removed only after the move."""
    if not target.exists():
        os.replace(source, target)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    backup.rmdir()
    os.replace(target, backup)
    try:
        os.replace(source, target)
    except OSError:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
