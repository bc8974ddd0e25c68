"""Per-channel normalisation of track displacements and hand states, saved with the model."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import h5py
import numpy as np
import torch
from torch import nn

from .h5format import EPISODES_GROUP, list_episode_files, validate_file

__all__ = ["Normalizer"]


class Normalizer(nn.Module):
    """Mean and standard deviation per channel, kept as buffers so `state_dict` carries them.

    Kinds and their channels:
        "track": displacement of a point from step 0, (dx, dy) pixels.
        "hand_uvd": displacement of the hand from step 0, (du, dv) pixels and dd metres.
        "hand_rot6d": the hand's 6D rotation (first two rotation-matrix columns), unitless.

    Before `fit`, every kind has mean 0 and std 1, so both maps are the identity.

    Args:
        eps: Floor for the standard deviation, so a constant channel does not divide by zero.

    Examples:
        >>> norm = Normalizer.fit("data/episodes/train.h5")  # doctest: +SKIP
        >>> z = norm.normalize("track", batch["track_disp"])  # doctest: +SKIP
    """

    KINDS: ClassVar[dict[str, int]] = {"track": 2, "hand_uvd": 3, "hand_rot6d": 6}

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        for kind, channels in self.KINDS.items():
            self.register_buffer(f"{kind}_mean", torch.zeros(channels))
            self.register_buffer(f"{kind}_std", torch.ones(channels))

    @classmethod
    def fit(cls, source: Any, eps: float = 1e-6) -> Normalizer:
        """Compute the statistics from the episodes of a training split.

        Args:
            source: An `EpisodeDataset` (its files are read), an HDF5 file or a directory.
            eps: Floor for the standard deviation.

        Returns:
            A fitted normaliser. Kinds absent from the files keep mean 0 and std 1.
        """
        files = getattr(source, "files", None)
        if files is None:
            if not isinstance(source, str | os.PathLike):
                raise TypeError(
                    "source must be an EpisodeDataset, a file or a directory path, "
                    f"got {type(source).__name__}"
                )
            files = list_episode_files(source)
            for path in files:
                validate_file(path)

        sums = {kind: _Moments(channels) for kind, channels in cls.KINDS.items()}
        for path in files:
            with h5py.File(path, "r") as handle:
                for group in handle[EPISODES_GROUP].values():
                    tracks = group["tracks"][()]
                    sums["track"].add(tracks[:, 1:] - tracks[:, :1])
                    if "hand_uvd" in group:
                        uvd = group["hand_uvd"][()]
                        sums["hand_uvd"].add(uvd[:, 1:] - uvd[:, :1])
                        sums["hand_rot6d"].add(group["hand_rot6d"][()])

        normalizer = cls(eps=eps)
        for kind, moments in sums.items():
            if moments.count == 0:
                continue
            mean, std = moments.result()
            getattr(normalizer, f"{kind}_mean").copy_(torch.from_numpy(mean))
            getattr(normalizer, f"{kind}_std").copy_(torch.from_numpy(np.maximum(std, eps)))
        return normalizer

    def normalize(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """Map `x` (..., C) of one kind to zero mean and unit variance per channel."""
        mean, std = self._stats(kind, x)
        return (x - mean) / std

    def unnormalize(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """Invert `normalize` for one kind."""
        mean, std = self._stats(kind, x)
        return x * std + mean

    def _stats(self, kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {list(self.KINDS)}, got {kind!r}")
        channels = self.KINDS[kind]
        if x.shape[-1] != channels:
            raise ValueError(
                f"{kind} values need {channels} channels in the last dimension, got shape "
                f"{tuple(x.shape)}"
            )
        mean = getattr(self, f"{kind}_mean").to(dtype=x.dtype)
        std = getattr(self, f"{kind}_std").to(dtype=x.dtype)
        return mean, std


class _Moments:
    """Running per-channel sums in float64."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.total = np.zeros(channels)
        self.total_sq = np.zeros(channels)

    def add(self, values: np.ndarray) -> None:
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
        self.count += flat.shape[0]
        self.total += flat.sum(axis=0)
        self.total_sq += (flat**2).sum(axis=0)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.count
        variance = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        return mean.astype(np.float32), np.sqrt(variance).astype(np.float32)
