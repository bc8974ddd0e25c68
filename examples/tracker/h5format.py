"""HDF5 track-episode format: names, writer and validation.

Each file contains one split. The file attributes describe the whole file, and each episode is a
group under `/episodes`. docs/hdf5-format.md describes every field; the constants below are
the single source of the names, shapes and dtypes that the writer and the validator use.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "EpisodeFormatError",
    "FileInfo",
    "H5EpisodeWriter",
    "list_episode_files",
    "validate_file",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "ditblocks-tracks"
FORMAT_VERSION = 1
EPISODES_GROUP = "episodes"

REQUIRED_FILE_ATTRS = ("format", "format_version", "image_size", "num_steps", "num_points")

# Field name -> (shape template, allowed dtypes). Letters in the template are
# H, W: image size; N: query points; S: steps T + 1; P: hands; K: objects.
REQUIRED_FIELDS: dict[str, tuple[tuple[str | int, ...], tuple[str, ...]]] = {
    "rgb": (("H", "W", 3), ("uint8",)),
    "tracks": (("N", "S", 2), ("float32",)),
}
OPTIONAL_FIELDS: dict[str, tuple[tuple[str | int, ...], tuple[str, ...]]] = {
    "depth": (("H", "W"), ("float16", "float32")),
    "visibility": (("N", "S"), ("bool",)),
    "point_object": (("N",), ("int8", "int16", "int32", "int64")),
    "hand_uvd": (("P", "S", 3), ("float32",)),
    "hand_rot6d": (("P", "S", 6), ("float32",)),
    "object_pos": (("K", "S", 3), ("float32",)),
    "intrinsics": ((3, 3), ("float32", "float64")),
    "extrinsics": ((4, 4), ("float32", "float64")),
}
# Arrays whose values must all be finite.
FINITE_FIELDS = ("tracks", "hand_uvd", "hand_rot6d", "object_pos")
STRING_ATTRS_REQUIRED = ("instruction",)
STRING_ATTRS_OPTIONAL = ("alt_instruction", "intent")
INT_ATTRS_OPTIONAL = ("target_object", "seed")


class EpisodeFormatError(ValueError):
    """A track-episode file does not follow the format; the message names file, episode, field."""


@dataclass
class FileInfo:
    """Result of validating one file.

    Attributes:
        path: The file.
        episodes: Episode names in file order.
        image_size: (H, W) in pixels.
        num_steps: T, so every track has T + 1 slots.
        num_points: N query points per episode.
        optional_fields: Optional fields that every episode of the file has.
        attrs: The file attributes.
    """

    path: Path
    episodes: list[str]
    image_size: tuple[int, int]
    num_steps: int
    num_points: int
    optional_fields: frozenset[str]
    attrs: dict[str, Any] = field(default_factory=dict)


class H5EpisodeWriter:
    """Write episodes of one split to a temporary file that replaces `path` on close.

    The file appears under its final name only after `close()` succeeds, so a crash never
    leaves a half-written split behind.

    Args:
        path: Final file path.
        image_size: (H, W) of the frames in pixels.
        num_steps: T, the number of future steps (tracks have T + 1 slots).
        num_points: N, query points per episode.
        attrs: Extra file attributes, for example "generator" and "split".

    Examples:
        >>> with H5EpisodeWriter("train.h5", (128, 128), 16, 64) as writer:  # doctest: +SKIP
        ...     writer.write("train-000000", arrays, {"instruction": "lift the red cube"})
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: tuple[int, int],
        num_steps: int,
        num_points: int,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(suffix=".h5.tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp_path = Path(tmp_name)
        self._file = h5py.File(self._tmp_path, "w")
        self._file.attrs["format"] = FORMAT_NAME
        self._file.attrs["format_version"] = FORMAT_VERSION
        self._file.attrs["image_size"] = np.asarray(image_size, dtype=np.int64)
        self._file.attrs["num_steps"] = int(num_steps)
        self._file.attrs["num_points"] = int(num_points)
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = value
        self._episodes = self._file.create_group(EPISODES_GROUP)

    def write(self, name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        """Add one episode group.

        Args:
            name: Episode id, unique in the file.
            arrays: Field name to array; names outside the format raise.
            attrs: Episode attributes; "instruction" is required.

        Raises:
            ValueError: If a field name is unknown or the episode already exists.
        """
        known = REQUIRED_FIELDS.keys() | OPTIONAL_FIELDS.keys()
        unknown = sorted(set(arrays) - known)
        if unknown:
            raise ValueError(
                f"unknown episode fields {unknown}; expected names from {sorted(known)}"
            )
        if name in self._episodes:
            raise ValueError(f"episode {name!r} was already written to {self.path}")

        group = self._episodes.create_group(name)
        for key, value in arrays.items():
            # Images compress well and are read whole, so they get one chunk each.
            compression = "gzip" if key in ("rgb", "depth") else None
            group.create_dataset(key, data=value, compression=compression)
        for key, value in attrs.items():
            group.attrs[key] = value

    def close(self) -> None:
        """Flush the file and move it to its final name."""
        if self._file:
            self._file.close()
            os.replace(self._tmp_path, self.path)
            logger.info("wrote %s (%d episodes)", self.path, self.num_episodes)

    @property
    def num_episodes(self) -> int:
        """Number of episodes written so far."""
        if self._file:
            return len(self._episodes)
        with h5py.File(self.path, "r") as f:
            return len(f[EPISODES_GROUP])

    def abort(self) -> None:
        """Discard the temporary file without touching `path`."""
        if self._file:
            self._file.close()
        self._tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> H5EpisodeWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def list_episode_files(path: str | os.PathLike[str]) -> list[Path]:
    """Resolve a file or a directory of `*.h5` files to a sorted list of files.

    Raises:
        FileNotFoundError: If `path` does not exist.
        ValueError: If `path` is a directory without `*.h5` files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"episode path {path} does not exist; generate data first")
    if path.is_dir():
        files = sorted(path.glob("*.h5"))
        if not files:
            raise ValueError(
                f"directory {path} contains no *.h5 episode files; "
                "pass a file or a directory with at least one .h5 file"
            )
        return files
    return [path]


def validate_file(path: str | os.PathLike[str], check_values: bool = True) -> FileInfo:
    """Check that a file follows the format before any training starts.

    Reads every episode's metadata and its small arrays (tracks, hands), but not the images.

    Args:
        path: The HDF5 file.
        check_values: Also check that tracks and hand states are finite.

    Returns:
        The file's description.

    Raises:
        EpisodeFormatError: On any deviation; the message names the file, the episode and
            the field.
    """
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise EpisodeFormatError(
            f"{path}: cannot open as HDF5 (truncated or corrupt file?): {err}"
        ) from err

    with handle:
        attrs = _check_file_attrs(path, handle)
        if EPISODES_GROUP not in handle:
            raise EpisodeFormatError(f"{path}: missing group '/{EPISODES_GROUP}'")
        names = list(handle[EPISODES_GROUP])
        if not names:
            raise EpisodeFormatError(f"{path}: group '/{EPISODES_GROUP}' has no episodes")

        height, width = (int(v) for v in attrs["image_size"])
        sizes = {"H": height, "W": width, "S": int(attrs["num_steps"]) + 1}
        sizes["N"] = int(attrs["num_points"])
        present: set[str] | None = None
        for name in names:
            fields = _check_episode(path, name, handle[EPISODES_GROUP][name], sizes, check_values)
            present = fields if present is None else present & fields

    return FileInfo(
        path=path,
        episodes=names,
        image_size=(height, width),
        num_steps=sizes["S"] - 1,
        num_points=sizes["N"],
        optional_fields=frozenset(present or ()),
        attrs=attrs,
    )


def _check_file_attrs(path: Path, handle: h5py.File) -> dict[str, Any]:
    attrs = dict(handle.attrs)
    for key in REQUIRED_FILE_ATTRS:
        if key not in attrs:
            raise EpisodeFormatError(f"{path}: missing file attribute '{key}'")

    fmt = attrs["format"]
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != FORMAT_NAME:
        raise EpisodeFormatError(
            f"{path}: file attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r}"
        )
    if int(attrs["format_version"]) != FORMAT_VERSION:
        raise EpisodeFormatError(
            f"{path}: file attribute 'format_version' is {attrs['format_version']}, this reader "
            f"supports version {FORMAT_VERSION}; convert the file or use a matching reader"
        )
    image_size = np.asarray(attrs["image_size"])
    if image_size.shape != (2,) or (image_size <= 0).any():
        raise EpisodeFormatError(
            f"{path}: file attribute 'image_size' is {image_size.tolist()}, expected [H, W] > 0"
        )
    for key in ("num_steps", "num_points"):
        if int(attrs[key]) <= 0:
            raise EpisodeFormatError(
                f"{path}: file attribute '{key}' is {attrs[key]}, expected > 0"
            )
    return attrs


def _check_episode(
    path: Path,
    name: str,
    group: h5py.Group,
    sizes: dict[str, int],
    check_values: bool,
) -> set[str]:
    where = f"{path}: episode '{name}'"
    if not isinstance(group, h5py.Group):
        raise EpisodeFormatError(f"{where}: expected a group, found a {type(group).__name__}")

    for key in REQUIRED_FIELDS:
        if key not in group:
            raise EpisodeFormatError(f"{where}, field '{key}': missing required field")
    episode_sizes = dict(sizes)
    for key in ("hand_uvd", "object_pos"):
        if key in group and len(group[key].shape) == 3:
            episode_sizes["P" if key == "hand_uvd" else "K"] = group[key].shape[0]

    present = set()
    for key, (template, dtypes) in {**REQUIRED_FIELDS, **OPTIONAL_FIELDS}.items():
        if key not in group:
            continue
        present.add(key)
        _check_array(where, key, group[key], template, dtypes, episode_sizes)
    if ("hand_uvd" in present) != ("hand_rot6d" in present):
        raise EpisodeFormatError(
            f"{where}, field 'hand_rot6d': hand_uvd and hand_rot6d must be present together"
        )

    _check_attrs(where, group.attrs)
    if check_values:
        for key in FINITE_FIELDS:
            if key in group and not np.isfinite(_read(where, key, group[key])).all():
                raise EpisodeFormatError(f"{where}, field '{key}': contains NaN or inf")
    return present - REQUIRED_FIELDS.keys()


def _check_array(
    where: str,
    key: str,
    dataset: Any,
    template: tuple[str | int, ...],
    dtypes: tuple[str, ...],
    sizes: dict[str, int],
) -> None:
    if not isinstance(dataset, h5py.Dataset):
        raise EpisodeFormatError(f"{where}, field '{key}': expected a dataset, found a group")
    expected = tuple(sizes.get(d, d) if isinstance(d, str) else d for d in template)
    shape = dataset.shape
    matches = len(shape) == len(expected) and all(
        isinstance(e, str) or s == e for s, e in zip(shape, expected, strict=True)
    )
    if not matches:
        readable = tuple(f"{d}={sizes[d]}" if d in sizes else d for d in template)
        raise EpisodeFormatError(f"{where}, field '{key}': shape {shape}, expected {readable}")
    if dataset.dtype.name not in dtypes:
        raise EpisodeFormatError(
            f"{where}, field '{key}': dtype {dataset.dtype.name}, expected one of {dtypes}"
        )


def _check_attrs(where: str, attrs: h5py.AttributeManager) -> None:
    for key in (*STRING_ATTRS_REQUIRED, *STRING_ATTRS_OPTIONAL):
        if key not in attrs:
            if key in STRING_ATTRS_REQUIRED:
                raise EpisodeFormatError(f"{where}, field '{key}': missing required attribute")
            continue
        if not isinstance(attrs[key], str):
            raise EpisodeFormatError(
                f"{where}, field '{key}': attribute must be a string, got "
                f"{type(attrs[key]).__name__} {attrs[key]!r}"
            )
    for key in INT_ATTRS_OPTIONAL:
        if key in attrs and not np.issubdtype(np.asarray(attrs[key]).dtype, np.integer):
            raise EpisodeFormatError(
                f"{where}, field '{key}': attribute must be an integer, got {attrs[key]!r}"
            )


def _read(where: str, key: str, dataset: h5py.Dataset) -> np.ndarray:
    try:
        return dataset[()]
    except OSError as err:
        raise EpisodeFormatError(
            f"{where}, field '{key}': cannot read (truncated or corrupt file?): {err}"
        ) from err
