"""Lazy PyTorch dataset over HDF5 track-episode files.

Files are validated when the dataset is built, so a broken file fails before training starts.
Each worker process opens its own read-only handles on first access and reads one episode
group per item; no file is loaded whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from .h5format import EPISODES_GROUP, list_episode_files, validate_file

__all__ = ["UNKNOWN_OBJECT", "EpisodeDataset", "collate_episodes"]

# point_object value for files that do not label points (-1 is the table, -2 the hand).
UNKNOWN_OBJECT = -3


class EpisodeDataset(Dataset):
    """Episodes of point tracks and hand poses with the first frame and the instruction.

    Each item is a dict with these entries (pixels: x right, y down, origin top-left):

    - "frames": (3, H, W) float32 RGB in [0, 1], the frame at step 0.
    - "query_coords": (N, 2) float32 pixel positions at step 0.
    - "track_disp": (N, T+1, 2) float32 displacement from step 0 in pixels.
    - "visibility": (N, T+1) bool.
    - "point_object": (N,) int64 object index, -1 table, -2 hand, -3 unknown.
    - "target_object": () int64 index of the object the instruction names, -1 unknown.
    - "instruction", "alt_instruction", "episode": strings.
    - "depth": (1, H, W) float32 metres, only with `load_depth=True` and files that have it.
    - "hand_uvd" (P, T+1, 3) and "hand_rot6d" (P, T+1, 6) float32, when the files have them.

    Args:
        path: An HDF5 file or a directory of `*.h5` files in the track-episode format.
        num_points: Subsample this many query points per item, without replacement; None
            keeps all points of the file.
        load_depth: Return the depth map when the files have one.
        color_jitter: Strength in [0, 1) of random brightness, contrast and saturation changes.
            Only photometric changes are offered, because a flip or crop would also have to
            rewrite "left"/"right" in the instructions and the tracks.
        seed: Seed of the per-item random draws; item i of epoch e always draws the same points
            and jitter for the same seed.

    Raises:
        EpisodeFormatError: If a file breaks the format (message names file, episode, field).
        ValueError: If files disagree on image size or steps, or have fewer points than
            `num_points`, or an argument is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        num_points: int | None = None,
        load_depth: bool = False,
        color_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}")
        if num_points is not None and num_points <= 0:
            raise ValueError(f"num_points must be positive or None, got {num_points}")

        self.files = list_episode_files(path)
        self.infos = [validate_file(f) for f in self.files]
        self._check_files_agree(num_points)

        self.num_points = num_points
        self.load_depth = load_depth
        self.color_jitter = color_jitter
        self.seed = seed
        self.epoch = 0
        self.image_size = self.infos[0].image_size
        self.num_steps = self.infos[0].num_steps
        self.optional_fields = frozenset.intersection(*(i.optional_fields for i in self.infos))
        self.index = [(i, name) for i, info in enumerate(self.infos) for name in info.episodes]
        self._handles: dict[int, h5py.File] = {}
        self._handles_pid = os.getpid()

    def _check_files_agree(self, num_points: int | None) -> None:
        first = self.infos[0]
        for info in self.infos[1:]:
            if (info.image_size, info.num_steps) != (first.image_size, first.num_steps):
                raise ValueError(
                    f"{info.path} has image size {info.image_size} and {info.num_steps} steps but "
                    f"{first.path} has {first.image_size} and {first.num_steps}; "
                    "pass files of one configuration"
                )
        counts = {info.num_points for info in self.infos}
        if num_points is None and len(counts) > 1:
            raise ValueError(
                f"files have different point counts {sorted(counts)}; pass num_points "
                f"<= {min(counts)} to subsample them to one size"
            )
        if num_points is not None and num_points > min(counts):
            raise ValueError(
                f"num_points={num_points} exceeds the {min(counts)} points of the smallest file; "
                f"pass num_points <= {min(counts)}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, Any]:
        file_index, name = self.index[item]
        group = self._file(file_index)[EPISODES_GROUP][name]
        rng = np.random.default_rng([self.seed, self.epoch, item])

        tracks = group["tracks"][()]
        chosen = self._choose_points(rng, tracks.shape[0])
        tracks = tracks[chosen]
        sample = {
            "frames": self._frames(rng, group["rgb"][()]),
            "query_coords": torch.from_numpy(tracks[:, 0].copy()),
            "track_disp": torch.from_numpy(tracks - tracks[:, :1]),
            "visibility": self._visibility(group, chosen, tracks.shape[:2]),
            "point_object": self._point_object(group, chosen),
            "target_object": torch.tensor(int(group.attrs.get("target_object", -1))),
            "instruction": str(group.attrs["instruction"]),
            "alt_instruction": str(group.attrs.get("alt_instruction", "")),
            "episode": name,
        }
        if self.load_depth and "depth" in self.optional_fields:
            depth = group["depth"][()].astype(np.float32)
            sample["depth"] = torch.from_numpy(depth)[None]
        if "hand_uvd" in self.optional_fields:
            sample["hand_uvd"] = torch.from_numpy(group["hand_uvd"][()])
            sample["hand_rot6d"] = torch.from_numpy(group["hand_rot6d"][()])
        return sample

    def _file(self, file_index: int) -> h5py.File:
        # Handles opened before a fork must not be shared with the child, so reopen per process.
        if self._handles_pid != os.getpid():
            self._handles = {}
            self._handles_pid = os.getpid()
        if file_index not in self._handles:
            self._handles[file_index] = h5py.File(self.files[file_index], "r")
        return self._handles[file_index]

    def _choose_points(self, rng: np.random.Generator, available: int) -> np.ndarray:
        if self.num_points is None or self.num_points == available:
            return np.arange(available)
        return np.sort(rng.choice(available, size=self.num_points, replace=False))

    def _frames(self, rng: np.random.Generator, rgb: np.ndarray) -> torch.Tensor:
        frames = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        if self.color_jitter == 0.0:
            return frames

        brightness, contrast, saturation = 1.0 + rng.uniform(
            -self.color_jitter, self.color_jitter, size=3
        )
        frames = frames * brightness
        mean = frames.mean()
        frames = (frames - mean) * contrast + mean
        gray = frames.mean(dim=0, keepdim=True)
        frames = (frames - gray) * saturation + gray
        return frames.clamp_(0.0, 1.0)

    def _visibility(
        self, group: h5py.Group, chosen: np.ndarray, shape: tuple[int, ...]
    ) -> torch.Tensor:
        if "visibility" not in group:
            return torch.ones(shape, dtype=torch.bool)
        return torch.from_numpy(group["visibility"][()][chosen])

    def _point_object(self, group: h5py.Group, chosen: np.ndarray) -> torch.Tensor:
        if "point_object" not in group:
            return torch.full((len(chosen),), UNKNOWN_OBJECT, dtype=torch.int64)
        return torch.from_numpy(group["point_object"][()][chosen].astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def close(self) -> None:
        """Close the file handles of this process."""
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


def collate_episodes(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of items and keep strings as lists.

    Raises:
        ValueError: If the batch is empty or items have different keys.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    keys = batch[0].keys()
    for item in batch[1:]:
        if item.keys() != keys:
            raise ValueError(
                f"items have different fields {sorted(keys)} and {sorted(item.keys())}; "
                "build the dataset from files with the same optional fields"
            )
    out: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
