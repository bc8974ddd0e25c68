"""Tests of examples/predict_tracker.py run in-process on a saved tiny model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from tracker_helpers import randomize_outputs, tiny_model

import predict_tracker

IMAGE_WIDTH, IMAGE_HEIGHT = 48, 40  # not the model's 32 x 32, so the script must resize


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Run this module's tiny tensors on one thread.

    Intra-op threads give no speedup on tensors this small. On a 2-core machine with a load
    average of 5, the model and predictor tests took 163 s with two threads and 16 s with one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = tiny_model(prediction_type="sample")
    randomize_outputs(model)
    folder = tmp_path_factory.mktemp("predict") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(pixels).save(path)
    return path


def _run(model_dir, image_path, out, *extra):
    argv = ["--model", str(model_dir), "--image", str(image_path), "--text", "lift the cube"]
    argv += ["--steps", "3", "--out", str(out), *extra]
    return predict_tracker.main(argv)


def _error_message(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        predict_tracker.main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


def test_predict_grid_writes_png_and_json(model_dir, image_path, tmp_path, caplog):
    out = tmp_path / "prediction.png"
    with caplog.at_level(logging.INFO):
        assert _run(model_dir, image_path, out, "--points", "grid:3") == 0

    assert "Resizing the image from 48x40" in caplog.text
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        assert picture.size[0] > 100
    document = json.loads(out.with_suffix(".json").read_text())
    tracks = np.asarray(document["tracks"])
    queries = np.asarray(document["query_points"])
    assert tracks.shape == (9, 5, 2)
    assert np.array_equal(tracks[:, 0], queries)
    # The grid covers the input image, so the queries are in its pixels, not the model's.
    assert queries[:, 0].max() == pytest.approx(IMAGE_WIDTH * 5 / 6)
    assert queries[:, 1].max() == pytest.approx(IMAGE_HEIGHT * 5 / 6)
    assert document["instruction"] == "lift the cube"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prediction.json", "prediction.png"]


def test_predict_points_file_and_npz(model_dir, image_path, tmp_path):
    points = np.array([[4.0, 5.0], [40.5, 30.25]], dtype=np.float32)
    points_path = tmp_path / "points.npy"
    np.save(points_path, points)
    out = tmp_path / "prediction.png"
    _run(model_dir, image_path, out, "--points", str(points_path), "--format", "npz")

    with np.load(out.with_suffix(".npz"), allow_pickle=False) as data:
        assert data["tracks"].shape == (2, 5, 2)
        assert np.array_equal(data["tracks"][:, 0], points)
        assert json.loads(str(data["settings"]))["num_inference_steps"] == 3


def test_predict_same_seed_same_tracks(model_dir, image_path, tmp_path):
    first, second, other = (tmp_path / f"{name}.png" for name in ("a", "b", "c"))
    _run(model_dir, image_path, first, "--seed", "5")
    _run(model_dir, image_path, second, "--seed", "5")
    _run(model_dir, image_path, other, "--seed", "6")
    tracks = [
        json.loads(p.with_suffix(".json").read_text())["tracks"] for p in (first, second, other)
    ]
    assert tracks[0] == tracks[1]
    assert tracks[0] != tracks[2]


def test_predict_missing_image_message(model_dir, tmp_path, capsys):
    message = _error_message(
        capsys,
        "--model",
        str(model_dir),
        "--image",
        str(tmp_path / "absent.png"),
        "--text",
        "lift it",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert "absent.png does not exist" in message
    assert "Traceback" not in message


def test_predict_empty_text_message(model_dir, image_path, tmp_path, capsys):
    message = _error_message(
        capsys,
        "--model",
        str(model_dir),
        "--image",
        str(image_path),
        "--text",
        "   ",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert "--text is empty" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("grid:0", "use grid:K with K from 1 to 64"),
        ("grid:x", "use grid:K with K from 1 to 64"),
        ("points.xyz", "neither grid:K nor"),
        ("missing.json", "does not exist"),
    ],
)
def test_predict_bad_points_spec_message(model_dir, image_path, tmp_path, capsys, spec, expected):
    message = _error_message(
        capsys,
        "--model",
        str(model_dir),
        "--image",
        str(image_path),
        "--text",
        "lift it",
        "--points",
        spec,
        "--out",
        str(tmp_path / "o.png"),
    )
    assert expected in message


def test_predict_points_outside_image_message(model_dir, image_path, tmp_path, capsys):
    points_path = tmp_path / "points.json"
    points_path.write_text(json.dumps([[1.0, 1.0], [48.0, 3.0]]))
    message = _error_message(
        capsys,
        "--model",
        str(model_dir),
        "--image",
        str(image_path),
        "--text",
        "lift it",
        "--points",
        str(points_path),
        "--out",
        str(tmp_path / "o.png"),
    )
    assert "rows [1] lie outside the 48x40 image" in message


def test_predict_not_a_model_folder_message(image_path, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    message = _error_message(
        capsys,
        "--model",
        str(tmp_path / "empty"),
        "--image",
        str(image_path),
        "--text",
        "lift it",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert "could not load the model" in message
    assert "model.safetensors is missing" in message


def test_predict_depth_wrong_shape_message(model_dir, image_path, tmp_path, capsys):
    depth_path = tmp_path / "depth.npy"
    np.save(depth_path, np.ones((10, 10), dtype=np.float32))
    message = _error_message(
        capsys,
        "--model",
        str(model_dir),
        "--image",
        str(image_path),
        "--text",
        "lift it",
        "--depth",
        str(depth_path),
        "--out",
        str(tmp_path / "o.png"),
    )
    assert "has shape (10, 10), expected (40, 48)" in message
