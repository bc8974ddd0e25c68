"""Tests of the HDF5 track-episode format, its validation, the Dataset and the Normalizer."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from tracker.dataset import EpisodeDataset, collate_episodes
from tracker.h5format import EpisodeFormatError, H5EpisodeWriter, validate_file
from tracker.normalizer import Normalizer

SIZE = (24, 32)
STEPS = 5
POINTS = 10


def make_episode(rng: np.random.Generator, index: int) -> tuple[dict, dict]:
    """Random arrays and attributes of one valid episode (no simulation)."""
    start = rng.uniform(0, 24, size=(POINTS, 1, 2))
    tracks = start + np.cumsum(rng.normal(0, 2, size=(POINTS, STEPS + 1, 2)), axis=1)
    tracks[:, 0] = start[:, 0]
    arrays = {
        "rgb": rng.integers(0, 256, size=(*SIZE, 3), dtype=np.uint8),
        "depth": rng.uniform(0.5, 1.5, size=SIZE).astype(np.float16),
        "tracks": tracks.astype(np.float32),
        "visibility": rng.random((POINTS, STEPS + 1)) > 0.2,
        "point_object": rng.integers(-2, 3, size=POINTS).astype(np.int64),
        "hand_uvd": rng.normal(10, 3, size=(1, STEPS + 1, 3)).astype(np.float32),
        "hand_rot6d": rng.normal(0, 1, size=(1, STEPS + 1, 6)).astype(np.float32),
    }
    attrs = {
        "instruction": f"push the red cube to the left {index}",
        "alt_instruction": f"lift the blue ball {index}",
        "target_object": index % 3,
        "seed": index,
    }
    return arrays, attrs


def write_file(path: Path, count: int = 4, seed: int = 0) -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(seed)
    episodes = [make_episode(rng, i) for i in range(count)]
    with H5EpisodeWriter(path, SIZE, STEPS, POINTS, {"generator": "test"}) as writer:
        for i, (arrays, attrs) in enumerate(episodes):
            writer.write(f"ep-{i:03d}", arrays, attrs)
    return episodes


@pytest.fixture()
def episode_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.h5"
    write_file(path)
    return path


def test_round_trip_returns_written_values(episode_file: Path) -> None:
    written = write_file(episode_file)
    dataset = EpisodeDataset(episode_file, load_depth=True)

    assert len(dataset) == len(written)
    for item, (arrays, attrs) in zip(dataset, written, strict=True):
        tracks = arrays["tracks"]
        expected_frames = arrays["rgb"].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(item["frames"].numpy(), expected_frames)
        np.testing.assert_array_equal(item["query_coords"].numpy(), tracks[:, 0])
        np.testing.assert_array_equal(item["track_disp"].numpy(), tracks - tracks[:, :1])
        np.testing.assert_array_equal(item["visibility"].numpy(), arrays["visibility"])
        np.testing.assert_array_equal(item["point_object"].numpy(), arrays["point_object"])
        np.testing.assert_array_equal(item["depth"][0].numpy(), arrays["depth"].astype(np.float32))
        np.testing.assert_array_equal(item["hand_uvd"].numpy(), arrays["hand_uvd"])
        np.testing.assert_array_equal(item["hand_rot6d"].numpy(), arrays["hand_rot6d"])
        assert item["instruction"] == attrs["instruction"]
        assert item["alt_instruction"] == attrs["alt_instruction"]
        assert int(item["target_object"]) == attrs["target_object"]


def test_item_dtypes_and_shapes_follow_contract(episode_file: Path) -> None:
    item = EpisodeDataset(episode_file, load_depth=True)[0]

    assert item["frames"].dtype == torch.float32
    assert item["frames"].shape == (3, *SIZE)
    assert item["depth"].dtype == torch.float32
    assert item["depth"].shape == (1, *SIZE)
    assert item["query_coords"].dtype == torch.float32
    assert item["track_disp"].shape == (POINTS, STEPS + 1, 2)
    assert item["visibility"].dtype == torch.bool
    assert item["point_object"].dtype == torch.int64
    assert item["target_object"].dtype == torch.int64
    assert item["target_object"].dim() == 0
    assert item["hand_uvd"].shape == (1, STEPS + 1, 3)
    assert item["hand_rot6d"].shape == (1, STEPS + 1, 6)
    assert (item["track_disp"][:, 0] == 0).all()


def test_depth_left_out_unless_requested(episode_file: Path) -> None:
    assert "depth" not in EpisodeDataset(episode_file)[0]


def test_optional_fields_absent_get_defaults(tmp_path: Path) -> None:
    path = tmp_path / "minimal.h5"
    rng = np.random.default_rng(1)
    arrays, _ = make_episode(rng, 0)
    with H5EpisodeWriter(path, SIZE, STEPS, POINTS) as writer:
        writer.write("only", {k: arrays[k] for k in ("rgb", "tracks")}, {"instruction": "lift it"})

    item = EpisodeDataset(path, load_depth=True)[0]

    assert item["visibility"].all()
    assert (item["point_object"] == -3).all()
    assert int(item["target_object"]) == -1
    for key in ("depth", "hand_uvd", "hand_rot6d"):
        assert key not in item


def test_subsampling_repeats_per_seed_and_changes_per_epoch(episode_file: Path) -> None:
    first = EpisodeDataset(episode_file, num_points=4, seed=3)
    second = EpisodeDataset(episode_file, num_points=4, seed=3)

    a, b = first[1], second[1]
    first.set_epoch(1)
    c = first[1]

    assert a["query_coords"].shape == (4, 2)
    assert torch.equal(a["query_coords"], b["query_coords"])
    assert not torch.equal(a["query_coords"], c["query_coords"])


def test_color_jitter_keeps_tracks_and_range(episode_file: Path) -> None:
    plain = EpisodeDataset(episode_file)[2]
    jittered = EpisodeDataset(episode_file, color_jitter=0.4, seed=5)[2]

    assert torch.equal(plain["track_disp"], jittered["track_disp"])
    assert not torch.equal(plain["frames"], jittered["frames"])
    assert jittered["frames"].min() >= 0
    assert jittered["frames"].max() <= 1


def test_directory_reads_every_file(tmp_path: Path) -> None:
    write_file(tmp_path / "a.h5", count=2, seed=1)
    write_file(tmp_path / "b.h5", count=3, seed=2)

    assert len(EpisodeDataset(tmp_path)) == 5


def test_empty_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"contains no \*\.h5 episode files"):
        EpisodeDataset(tmp_path)


def test_too_many_points_requested_raises(episode_file: Path) -> None:
    with pytest.raises(ValueError, match="num_points=11 exceeds the 10 points"):
        EpisodeDataset(episode_file, num_points=11)


def _delete(name: str):
    def edit(handle: h5py.File) -> None:
        del handle["episodes/ep-002"][name]

    return edit


def _replace(name: str, value: np.ndarray):
    def edit(handle: h5py.File) -> None:
        group = handle["episodes/ep-002"]
        del group[name]
        group[name] = value

    return edit


def _set_attr(name: str, value: object, episode: bool = True):
    def edit(handle: h5py.File) -> None:
        target = handle["episodes/ep-002"] if episode else handle
        target.attrs[name] = value

    return edit


def _poison(name: str, value: float):
    def edit(handle: h5py.File) -> None:
        handle["episodes/ep-002"][name][0, 1, 0] = value

    return edit


# (case id, edit of a valid file, the field the message must name, other message text)
BROKEN_CASES = [
    ("missing_tracks", _delete("tracks"), "tracks", "missing required field"),
    ("missing_rgb", _delete("rgb"), "rgb", "missing required field"),
    (
        "missing_instruction",
        lambda h: h["episodes/ep-002"].attrs.__delitem__("instruction"),
        "instruction",
        "missing required attribute",
    ),
    (
        "tracks_shape",
        _replace("tracks", np.zeros((POINTS, STEPS + 1, 3), np.float32)),
        "tracks",
        "shape",
    ),
    (
        "visibility_steps",
        _replace("visibility", np.ones((POINTS, STEPS), bool)),
        "visibility",
        "shape",
    ),
    ("rgb_dtype", _replace("rgb", np.zeros((*SIZE, 3), np.float32)), "rgb", "dtype float32"),
    (
        "tracks_dtype",
        _replace("tracks", np.zeros((POINTS, STEPS + 1, 2), np.float64)),
        "tracks",
        "dtype float64",
    ),
    ("instruction_number", _set_attr("instruction", 7), "instruction", "must be a string"),
    (
        "alt_instruction_bytes",
        _set_attr("alt_instruction", np.bytes_(b"lift")),
        "alt_instruction",
        "must be a string",
    ),
    ("tracks_nan", _poison("tracks", np.nan), "tracks", "NaN or inf"),
    ("hand_inf", _poison("hand_uvd", np.inf), "hand_uvd", "NaN or inf"),
    ("hand_rot_missing", _delete("hand_rot6d"), "hand_rot6d", "present together"),
]


@pytest.mark.parametrize(
    ("edit", "field", "text"),
    [case[1:] for case in BROKEN_CASES],
    ids=[case[0] for case in BROKEN_CASES],
)
def test_broken_episode_raises_naming_file_episode_field(
    episode_file: Path, edit, field: str, text: str
) -> None:
    with h5py.File(episode_file, "r+") as handle:
        edit(handle)

    with pytest.raises(EpisodeFormatError) as info:
        EpisodeDataset(episode_file)

    message = str(info.value)
    assert str(episode_file) in message
    assert "episode 'ep-002'" in message
    assert f"field '{field}'" in message
    assert text in message


def test_wrong_format_version_raises(episode_file: Path) -> None:
    with h5py.File(episode_file, "r+") as handle:
        handle.attrs["format_version"] = 99

    with pytest.raises(EpisodeFormatError) as info:
        validate_file(episode_file)

    assert str(episode_file) in str(info.value)
    assert "'format_version' is 99" in str(info.value)


def test_missing_file_attribute_raises(episode_file: Path) -> None:
    with h5py.File(episode_file, "r+") as handle:
        del handle.attrs["num_steps"]

    with pytest.raises(EpisodeFormatError, match="missing file attribute 'num_steps'"):
        validate_file(episode_file)


def test_truncated_file_raises(episode_file: Path) -> None:
    data = episode_file.read_bytes()
    episode_file.write_bytes(data[: len(data) // 2])

    with pytest.raises(EpisodeFormatError) as info:
        EpisodeDataset(episode_file)

    assert str(episode_file) in str(info.value)
    assert "truncated or corrupt" in str(info.value)


def test_corrupt_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())

    with pytest.raises(EpisodeFormatError, match="cannot open as HDF5"):
        EpisodeDataset(path)


def test_writer_abort_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "split.h5"
    with pytest.raises(RuntimeError), H5EpisodeWriter(path, SIZE, STEPS, POINTS):
        raise RuntimeError("generation failed")

    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_unknown_field(tmp_path: Path) -> None:
    with H5EpisodeWriter(tmp_path / "x.h5", SIZE, STEPS, POINTS) as writer:
        with pytest.raises(ValueError, match="unknown episode fields \\['flow'\\]"):
            writer.write("a", {"flow": np.zeros(3)}, {"instruction": "x"})
        writer.write("a", make_episode(np.random.default_rng(0), 0)[0], {"instruction": "x"})


def test_normalizer_identity_before_fit() -> None:
    normalizer = Normalizer()
    x = torch.randn(3, 4, 2)

    assert torch.equal(normalizer.normalize("track", x), x)
    assert set(normalizer.state_dict()) == {
        f"{kind}_{stat}" for kind in Normalizer.KINDS for stat in ("mean", "std")
    }


def test_normalizer_fit_matches_numpy_statistics(episode_file: Path) -> None:
    written = write_file(episode_file)
    normalizer = Normalizer.fit(episode_file)

    disp = np.concatenate([a["tracks"][:, 1:] - a["tracks"][:, :1] for a, _ in written])
    disp = disp.reshape(-1, 2).astype(np.float64)
    rot = np.concatenate([a["hand_rot6d"] for a, _ in written]).reshape(-1, 6).astype(np.float64)
    np.testing.assert_allclose(normalizer.track_mean.numpy(), disp.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalizer.track_std.numpy(), disp.std(0), rtol=1e-5)
    np.testing.assert_allclose(normalizer.hand_rot6d_std.numpy(), rot.std(0), rtol=1e-5)


def test_normalizer_fit_from_dataset_equals_fit_from_file(episode_file: Path) -> None:
    from_file = Normalizer.fit(episode_file).state_dict()
    from_dataset = Normalizer.fit(EpisodeDataset(episode_file)).state_dict()

    for key, value in from_file.items():
        assert torch.equal(value, from_dataset[key]), key


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(sorted(Normalizer.KINDS)),
    scale=st.floats(1e-3, 1e3),
    shift=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_normalizer_unnormalize_inverts_normalize(
    kind: str, scale: float, shift: float, seed: int
) -> None:
    channels = Normalizer.KINDS[kind]
    generator = torch.Generator().manual_seed(seed)
    normalizer = Normalizer()
    getattr(normalizer, f"{kind}_mean").copy_(torch.randn(channels, generator=generator) * shift)
    getattr(normalizer, f"{kind}_std").copy_(
        torch.rand(channels, generator=generator) * scale + 1e-3
    )
    x = torch.randn(2, 3, channels, generator=generator, dtype=torch.float64) * scale + shift

    back = normalizer.unnormalize(kind, normalizer.normalize(kind, x))
    forward = normalizer.normalize(kind, normalizer.unnormalize(kind, x))

    torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9 * max(1.0, abs(shift)))
    torch.testing.assert_close(forward, x, rtol=1e-9, atol=1e-9 * max(1.0, abs(shift)))


def test_normalizer_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match="hand_uvd values need 3 channels"):
        Normalizer().normalize("hand_uvd", torch.zeros(2, 6))
    with pytest.raises(ValueError, match="kind must be one of"):
        Normalizer().normalize("depth", torch.zeros(2, 1))


def test_dataloader_two_workers_matches_single_process(episode_file: Path) -> None:
    write_file(episode_file, count=6)
    dataset = EpisodeDataset(episode_file, num_points=8, color_jitter=0.2, seed=1)
    dataset[0]  # Open a handle in the parent first; workers must not reuse it.

    def batches(workers: int) -> list[dict]:
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_episodes)
        return list(loader)

    parallel, serial = batches(2), batches(0)

    assert len(parallel) == len(serial) == 2
    for got, expected in zip(parallel, serial, strict=True):
        assert got["instruction"] == expected["instruction"]
        assert got["episode"] == expected["episode"]
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
    assert parallel[0]["frames"].shape == (4, 3, *SIZE)
    assert isinstance(parallel[0]["alt_instruction"], list)


def test_collate_rejects_mismatched_items(episode_file: Path) -> None:
    item = EpisodeDataset(episode_file)[0]
    partial = {k: v for k, v in item.items() if k != "hand_uvd"}

    with pytest.raises(ValueError, match="items have different fields"):
        collate_episodes([item, partial])
    with pytest.raises(ValueError, match="empty batch"):
        collate_episodes([])
