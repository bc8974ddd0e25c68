"""Tests of the MuJoCo episode generator: determinism, physics sanity, tracks and visibility."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tracker.generate import EpisodeConfig, episode_seed, generate_episode, generate_split
from tracker.h5format import validate_file
from tracker.scene import HELDOUT_PAIRS, TABLE_HALF_SIZE

pytestmark = pytest.mark.slow

CONFIG = EpisodeConfig()
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Twelve training episodes generated through two worker processes and read back."""
    path = tmp_path_factory.mktemp("episodes") / "train.h5"
    generate_split(path, "train", 12, base_seed=7, config=CONFIG, workers=2)
    validate_file(path)
    loaded = []
    with h5py.File(path, "r") as handle:
        for group in handle["episodes"].values():
            arrays = {key: group[key][()] for key in group}
            loaded.append({"arrays": arrays, "attrs": dict(group.attrs)})
    return loaded


def test_same_seed_gives_identical_arrays() -> None:
    first = generate_episode(1234, "train", CONFIG)
    second = generate_episode(1234, "train", CONFIG)

    assert first["arrays"].keys() == second["arrays"].keys()
    for key, value in first["arrays"].items():
        assert value.tobytes() == second["arrays"][key].tobytes(), key
    assert first["attrs"] == second["attrs"]


def test_same_scene_with_two_instructions_moves_different_objects() -> None:
    first = generate_episode(1234, "train", CONFIG)
    names = list(first["attrs"]["object_names"])
    target = int(first["attrs"]["target_object"])
    for other in range(len(names)):
        if other == target:
            continue
        second = generate_episode(1234, "train", CONFIG, target=other)
        if list(second["attrs"]["object_names"]) == names:
            break
    else:
        pytest.fail(f"no object of the scene {names} other than {target} allows a task")

    assert first["arrays"]["rgb"].tobytes() == second["arrays"]["rgb"].tobytes()
    assert first["attrs"]["instruction"] != second["attrs"]["instruction"]
    assert not np.allclose(first["arrays"]["tracks"], second["arrays"]["tracks"])
    for episode, moved in ((first, target), (second, other)):
        positions = episode["arrays"]["object_pos"]  # (K, S, 3) world metres
        travel = np.linalg.norm(positions[:, -1] - positions[:, 0], axis=-1)
        assert int(np.argmax(travel)) == moved, (episode["attrs"]["instruction"], travel)


def test_worker_output_equals_direct_call(episodes: list[dict]) -> None:
    direct = generate_episode(episode_seed(7, "train", 3), "train", CONFIG)

    for key, value in direct["arrays"].items():
        assert value.tobytes() == episodes[3]["arrays"][key].tobytes(), key


def test_objects_stay_on_table_unless_lifted(episodes: list[dict]) -> None:
    for episode in episodes:
        positions = episode["arrays"]["object_pos"]  # (K, S, 3) world metres
        target = episode["attrs"]["target_object"]
        lifted = episode["attrs"]["intent"] == "lift"
        for index, track in enumerate(positions):
            assert (np.abs(track[:, 0]) < TABLE_HALF_SIZE[0]).all()
            assert (np.abs(track[:, 1]) < TABLE_HALF_SIZE[1]).all()
            if lifted and index == target:
                assert track[-1, 2] - track[0, 2] > 0.06, episode["attrs"]["instruction"]
            else:
                assert np.abs(track[:, 2] - track[0, 2]).max() < 0.005


def test_named_object_moves_more_than_others(episodes: list[dict]) -> None:
    for episode in episodes:
        positions = episode["arrays"]["object_pos"]
        moved = np.linalg.norm(positions[:, -1] - positions[:, 0], axis=-1)
        target = episode["attrs"]["target_object"]
        others = np.delete(moved, target)

        assert moved[target] > 0.06, episode["attrs"]["instruction"]
        assert moved[target] > 5 * others.max(), episode["attrs"]["instruction"]


def test_target_points_move_tens_of_pixels(episodes: list[dict]) -> None:
    for episode in episodes:
        arrays = episode["arrays"]
        on_target = arrays["point_object"] == episode["attrs"]["target_object"]
        tracks = arrays["tracks"][on_target]
        displacement = np.linalg.norm(tracks[:, -1] - tracks[:, 0], axis=-1)

        assert on_target.sum() >= 8
        assert np.median(displacement) > 10.0, episode["attrs"]["instruction"]


def test_points_on_static_objects_stay_within_pixel(episodes: list[dict]) -> None:
    for episode in episodes:
        arrays = episode["arrays"]
        positions = arrays["object_pos"]
        moved = np.linalg.norm(positions - positions[:, :1], axis=-1).max(axis=1)
        static = [i for i, distance in enumerate(moved) if distance < 1e-3]
        on_static = np.isin(arrays["point_object"], [*static, -1])
        tracks = arrays["tracks"][on_static]

        assert on_static.any()
        assert np.abs(tracks - tracks[:, :1]).max() < 1.0


def test_query_points_cover_objects_table_and_hand(episodes: list[dict]) -> None:
    for episode in episodes:
        labels = episode["arrays"]["point_object"]
        assert len(labels) == CONFIG.num_points
        assert (labels >= 0).sum() >= CONFIG.num_points // 4
        assert (labels == -1).any()
        assert (labels == -2).any()
        assert episode["arrays"]["visibility"][:, 0].all()


def test_visibility_flips_when_hand_occludes(episodes: list[dict]) -> None:
    occluded = 0
    for episode in episodes:
        arrays = episode["arrays"]
        size = CONFIG.image_size
        tracks, visible = arrays["tracks"], arrays["visibility"]
        hand = arrays["hand_uvd"][0, :, :2]
        inside = ((tracks >= 0) & (tracks < size)).all(axis=-1)
        # Table points never move, so a table point that is hidden must be behind the hand.
        on_table = arrays["point_object"] == -1
        hidden = on_table[:, None] & inside & ~visible
        for point, step in zip(*np.nonzero(hidden), strict=True):
            occluded += 1
            assert np.linalg.norm(tracks[point, step] - hand[step]) < 40.0
    assert occluded > 0


def test_hand_rotation_columns_are_orthonormal(episodes: list[dict]) -> None:
    for episode in episodes:
        rot6d = episode["arrays"]["hand_rot6d"].reshape(-1, 2, 3)
        np.testing.assert_allclose(np.linalg.norm(rot6d, axis=-1), 1.0, atol=1e-4)
        np.testing.assert_allclose((rot6d[:, 0] * rot6d[:, 1]).sum(-1), 0.0, atol=1e-4)


def test_hand_uvd_matches_camera_projection(episodes: list[dict]) -> None:
    arrays = episodes[0]["arrays"]
    intrinsics, extrinsics = arrays["intrinsics"], arrays["extrinsics"]
    u, v, depth = arrays["hand_uvd"][0, 0]
    point_camera = np.linalg.inv(intrinsics) @ np.array([u, v, 1.0]) * depth
    point_world = np.linalg.inv(extrinsics) @ np.append(point_camera, 1.0)

    np.testing.assert_allclose(point_world[:3], [0.0, 0.17, 0.15], atol=2e-3)


def test_heldout_split_names_heldout_pairs() -> None:
    episode = generate_episode(episode_seed(0, "heldout", 0), "heldout", CONFIG)
    names = episode["attrs"]["object_names"]
    target = names[episode["attrs"]["target_object"]]

    assert tuple(target.split()) in HELDOUT_PAIRS
    assert target in episode["attrs"]["instruction"]


def test_training_scenes_exclude_heldout_pairs(episodes: list[dict]) -> None:
    for episode in episodes:
        for name in episode["attrs"]["object_names"]:
            assert tuple(name.split()) not in HELDOUT_PAIRS


def test_alt_instruction_names_another_object(episodes: list[dict]) -> None:
    for episode in episodes:
        attrs = episode["attrs"]
        names = attrs["object_names"]
        assert attrs["alt_target_object"] != attrs["target_object"]
        assert names[attrs["alt_target_object"]] in attrs["alt_instruction"]


def test_command_line_writes_valid_splits(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "tracker.generate",
        "--out",
        str(tmp_path),
        "--train",
        "2",
        "--val",
        "1",
        "--heldout",
        "1",
        "--workers",
        "1",
        "--image-size",
        "64",
        "--steps",
        "8",
        "--points",
        "16",
    ]
    result = subprocess.run(command, cwd=EXAMPLES_DIR, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    for split, count in (("train", 2), ("val", 1), ("heldout", 1)):
        info = validate_file(tmp_path / f"{split}.h5")
        assert len(info.episodes) == count
        assert info.image_size == (64, 64)
        assert info.num_steps == 8
        assert info.num_points == 16
