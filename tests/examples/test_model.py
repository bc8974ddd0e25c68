"""Tests of the DiffusionIntentTracker: config, tokens, loss, sampling and checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tracker_helpers import (
    hand_query,
    make_batch,
    randomize_outputs,
    text_encoder_dir,
    tiny_config,
    tiny_model,
)
from transformers import AutoTokenizer, BertConfig, BertModel

from tracker.backbone import create_vit
from tracker.model import X0_CLIP_RANGE, DiffusionIntentTracker
from tracker.model_config import SIZES, TrackerConfig, resolve_text_encoder
from tracker.normalizer import Normalizer
from tracker.pretrained import (
    CONFIG_NAME,
    TRAINING_CONFIG_NAME,
    WEIGHTS_NAME,
    IncompatibleCheckpointError,
)
from tracker.tokens import sample_at_points, sincos_position_2d


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


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

EXPECTED_SIZES = {
    "s": (384, 6, 6, "vit_small_patch16_dinov3", "google/umt5-small"),
    "b": (768, 12, 12, "vit_base_patch16_dinov3", "google/umt5-base"),
    "l": (1024, 16, 24, "vit_large_patch16_dinov3", "google/umt5-large"),
    "demo": (192, 3, 4, "vit_tiny_patch16_dinov3_qkvb", "sentence-transformers/all-MiniLM-L6-v2"),
}


@pytest.mark.parametrize("size", sorted(EXPECTED_SIZES))
def test_config_size_presets(size):
    config = TrackerConfig.from_size(size)
    hidden, heads, depth, vit_name, text_encoder = EXPECTED_SIZES[size]
    assert config.size == size
    assert config.hidden_size == hidden
    assert config.num_heads == heads
    assert config.depth == depth
    assert config.vit_name == vit_name
    assert config.text_encoder == text_encoder
    assert config.num_steps == 16
    assert config.prediction_type == "epsilon"


def test_config_json_round_trip():
    config = TrackerConfig.from_size("s", use_depth=True, prediction_type="v_prediction")
    restored = TrackerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config


def test_config_unknown_override_names_closest_field():
    with pytest.raises(ValueError, match=r"'use_hand'.*'use_hands'"):
        TrackerConfig.from_size("demo", use_hand=False)


def test_config_invalid_values_rejected():
    with pytest.raises(ValueError, match="prediction_type"):
        TrackerConfig.from_size("demo", prediction_type="score")
    with pytest.raises(ValueError, match="num_heads"):
        TrackerConfig.from_size("demo", hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="size='xl'"):
        TrackerConfig.from_size("xl")


def test_demo_text_encoder_resolves_to_package_folder():
    folder = resolve_text_encoder(SIZES["demo"]["text_encoder"])
    assert Path(folder).name == "model"
    assert (Path(folder) / "config.json").is_file()
    assert resolve_text_encoder("google/umt5-small") == "google/umt5-small"


# --------------------------------------------------------------------------------------------
# Tokens and shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["demo", "s", "b", "l"])
def test_token_and_output_shapes_per_size(size):
    # The meta device builds the real modules without allocating weights, so even size l is
    # cheap. The text encoder cannot run on meta, so the null text token replaces it.
    tokenizer = AutoTokenizer.from_pretrained(str(text_encoder_dir()))
    with torch.device("meta"):
        encoder = BertModel(
            BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
            )
        )
        config = TrackerConfig.from_size(size, vit_pretrained=False)
        model = DiffusionIntentTracker(config, text_tokenizer=tokenizer, text_encoder_model=encoder)
        batch, points, pixels, slots = 2, 8, config.image_size, config.num_slots
        frames = torch.rand(batch, 3, pixels, pixels)
        patches = model.scene(frames)
        conditions = model.conditions_from_patches(
            patches,
            frames,
            torch.rand(batch, points, 2),
            ["a", "b"],
            None,
            torch.rand(batch, 1, 3),
            null_text=True,
        )
        tracks, hands = model(
            torch.randn(batch, points, slots, 2),
            torch.randint(0, 1000, (batch,)),
            conditions,
            torch.randn(batch, 1, slots, 9),
        )

    num_patches = (pixels // 16) ** 2
    hidden = config.hidden_size
    assert patches.shape == (batch, num_patches, model.scene.width)
    assert conditions["context"].shape == (batch, 1 + num_patches, hidden)
    assert conditions["context_mask"].shape == (batch, 1 + num_patches)
    assert conditions["track_rows"].shape == (batch, points, hidden)
    assert conditions["hand_rows"].shape == (batch, 1, hidden)
    assert tracks.shape == (batch, points, slots, 2)
    assert hands.shape == (batch, 1, slots, 9)


def test_context_is_text_then_patches_with_mask():
    model = tiny_model()
    batch = make_batch(model.config)
    conditions = model.encode_conditions(
        batch["frames"], batch["query_coords"], ["lift it", "push the red cube to the left"]
    )
    text_tokens, text_mask = model.text.encode(["lift it", "push the red cube to the left"])
    length = text_tokens.shape[1]
    assert torch.equal(conditions["context_mask"][:, :length], text_mask)
    assert conditions["context_mask"][:, length:].all()
    assert conditions["context"].shape[1] == length + model.scene.num_patches
    assert torch.allclose(conditions["context"][:, :length], text_tokens)


def test_sincos_position_matches_for_point_and_patch_centre():
    # The patch (row 1, col 2) of a 16 px grid has its centre at x = 40, y = 24.
    point = sincos_position_2d(torch.tensor([[40.0, 24.0]]), image_size=64, dim=32)
    other = sincos_position_2d(torch.tensor([[24.0, 40.0]]), image_size=64, dim=32)
    assert point.shape == (1, 32)
    assert not torch.allclose(point, other)


def test_sample_at_points_reads_pixel_centres():
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    centres = torch.tensor([[[0.5, 0.5], [3.5, 0.5], [1.5, 2.5]]])  # (x, y) pixel centres
    values = sample_at_points(image, centres, image_size=4)
    assert values.squeeze().tolist() == [0.0, 3.0, 9.0]


# --------------------------------------------------------------------------------------------
# Training loss
# --------------------------------------------------------------------------------------------


def _train(model, batch, steps, cfg_dropout_prob=0.0, lr=3e-3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(steps):
        # The same generator seed every step makes the objective deterministic, so a
        # decrease is a property of the optimisation and not of lucky noise draws.
        losses = model.compute_loss(
            batch, cfg_dropout_prob=cfg_dropout_prob, generator=torch.Generator().manual_seed(0)
        )
        optimizer.zero_grad()
        losses["total_loss"].backward()
        optimizer.step()
        history.append({key: value.item() for key, value in losses.items()})
    return history


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_compute_loss_decreases_over_30_steps(prediction_type):
    model = tiny_model(prediction_type=prediction_type, hand_drop_prob=0.0)
    model.train()
    history = _train(model, make_batch(model.config), steps=30, cfg_dropout_prob=0.3)
    first, last = history[0], history[-1]
    assert last["total_loss"] < 0.5 * first["total_loss"]
    assert last["track_loss"] < first["track_loss"]
    assert last["hand_uvd_loss"] < first["hand_uvd_loss"]
    assert last["hand_rot_loss"] < first["hand_rot_loss"]


def test_compute_loss_components_without_hands():
    model = tiny_model(use_hands=False)
    batch = make_batch(model.config)
    del batch["hand_uvd"], batch["hand_rot6d"]
    losses = model.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"track_loss", "hand_uvd_loss", "hand_rot_loss", "total_loss"}
    assert all(value.dim() == 0 for value in losses.values())
    assert losses["hand_uvd_loss"].item() == 0.0
    assert losses["hand_rot_loss"].item() == 0.0
    assert losses["total_loss"].item() == pytest.approx(losses["track_loss"].item())
    assert losses["track_loss"].item() > 0.0


def test_compute_loss_reproducible_with_generator():
    model = tiny_model()
    batch = make_batch(model.config)
    first = model.compute_loss(batch, 0.5, generator=torch.Generator().manual_seed(3))
    second = model.compute_loss(batch, 0.5, generator=torch.Generator().manual_seed(3))
    third = model.compute_loss(batch, 0.5, generator=torch.Generator().manual_seed(4))
    assert first["total_loss"].item() == second["total_loss"].item()
    assert first["total_loss"].item() != third["total_loss"].item()


def test_compute_loss_missing_hands_in_batch_rejected():
    model = tiny_model()
    batch = make_batch(model.config)
    del batch["hand_rot6d"]
    with pytest.raises(ValueError, match=r"hand_rot6d.*use_hands=False"):
        model.compute_loss(batch)


def test_compute_loss_wrong_frame_size_rejected():
    model = tiny_model()
    batch = make_batch(model.config)
    batch["frames"] = torch.rand(2, 3, 48, 48)
    with pytest.raises(ValueError, match=r"frames.*\(B, 3, 32, 32\).*\(2, 3, 48, 48\)"):
        model.compute_loss(batch)


def test_frozen_vit_gets_no_gradient():
    model = tiny_model(hand_drop_prob=0.0)
    model.freeze_vit()
    assert model.vit_frozen
    model.compute_loss(make_batch(model.config))["total_loss"].backward()
    assert all(p.grad is None for p in model.scene.vit.parameters())
    assert model.context_proj.weight.grad is not None
    assert model.text.null_token.requires_grad
    assert not any(p.requires_grad for p in model.text.encoder.parameters())

    model.unfreeze_vit()
    assert not model.vit_frozen
    model.compute_loss(make_batch(model.config))["total_loss"].backward()
    assert any(p.grad is not None for p in model.scene.vit.parameters())


def test_depth_embedding_starts_at_zero_and_trains():
    model = tiny_model(use_depth=True, hand_drop_prob=0.0)
    # The zero-initialised heads and gates block every gradient upstream; give them weights.
    randomize_outputs(model)
    batch = make_batch(model.config)
    frames = batch["frames"]
    with torch.no_grad():
        with_depth = model.scene(frames, batch["depth"])
        other_depth = model.scene(frames, batch["depth"] * 3.0)
    assert torch.equal(with_depth, other_depth)

    model.compute_loss(batch)["total_loss"].backward()
    assert model.scene.depth_embed.weight.grad is not None
    assert model.scene.depth_embed.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _predict(model, batch, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return model.predict(batch["frames"], batch["query_coords"], batch["instruction"], **kwargs)


def test_predict_pins_slot0_and_returns_shapes():
    model = tiny_model()
    randomize_outputs(model)
    batch = make_batch(model.config, num_points=5)
    model.train()
    out = _predict(model, batch, hand_query=hand_query(batch))

    assert model.training, "predict must restore the previous mode"
    assert out["tracks"].shape == (2, 5, 5, 2)
    assert out["hand_uvd"].shape == (2, 1, 5, 3)
    assert out["hand_rot6d"].shape == (2, 1, 5, 6)
    assert torch.equal(out["tracks"][:, :, 0], batch["query_coords"])
    assert torch.equal(out["hand_uvd"][:, :, 0], batch["hand_uvd"][:, :, 0])
    assert torch.equal(out["hand_rot6d"][:, :, 0], batch["hand_rot6d"][:, :, 0])
    assert not torch.equal(out["tracks"][:, :, 1], batch["query_coords"])
    assert torch.isfinite(out["tracks"]).all()


def test_predict_without_hand_query_returns_tracks_only():
    model = tiny_model()
    out = _predict(model, make_batch(model.config))
    assert set(out) == {"tracks"}


def test_predict_hand_position_only_leaves_rotation_free():
    model = tiny_model()
    randomize_outputs(model)
    batch = make_batch(model.config)
    out = _predict(model, batch, hand_query=batch["hand_uvd"][:, :, 0])
    assert torch.equal(out["hand_uvd"][:, :, 0], batch["hand_uvd"][:, :, 0])
    assert not torch.equal(out["hand_rot6d"][:, :, 0], batch["hand_rot6d"][:, :, 0])


def test_predict_displacement_in_pixels_scales_with_normalizer():
    # Same weights and noise, track std doubled: every predicted displacement doubles, which
    # shows that the output is unnormalised into pixels.
    model = tiny_model(prediction_type="sample")
    randomize_outputs(model)
    batch = make_batch(model.config)
    model.normalizer.track_std.fill_(3.0)
    small = _predict(model, batch)["tracks"] - batch["query_coords"][:, :, None]
    model.normalizer.track_std.fill_(6.0)
    large = _predict(model, batch)["tracks"] - batch["query_coords"][:, :, None]
    assert small[:, :, 1:].abs().mean() > 0.1
    assert torch.allclose(large, 2.0 * small, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predict_first_step_from_pure_noise_stays_bounded(prediction_type):
    # An untrained epsilon model predicts zero noise, so DDIM's clean-sample estimate at the
    # noisiest timestep is the noise divided by sqrt(alpha_bar), about 1e-4 with the cosine
    # schedule. Without clipping that is a displacement of tens of thousands of pixels.
    model = tiny_model(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    batch = make_batch(model.config)
    model.normalizer.track_std.fill_(4.0)

    displacement = _predict(model, batch)["tracks"] - batch["query_coords"][:, :, None]

    bound = X0_CLIP_RANGE * 4.0 + model.normalizer.track_mean.abs().max()
    assert displacement.abs().max() <= bound + 1e-3


def test_predict_guidance_ignored_without_cfg_training(caplog):
    model = tiny_model(prediction_type="sample", trained_with_cfg=False)
    randomize_outputs(model)
    batch = make_batch(model.config)
    plain = _predict(model, batch)["tracks"]
    with caplog.at_level(logging.WARNING, logger="tracker.model"):
        guided = _predict(model, batch, guidance_scale=3.0)["tracks"]
    assert "trained_with_cfg=False" in caplog.text
    assert torch.equal(plain, guided)


def test_predict_guidance_changes_samples_with_cfg_training(caplog):
    model = tiny_model(prediction_type="sample", trained_with_cfg=True)
    randomize_outputs(model)
    batch = make_batch(model.config)
    plain = _predict(model, batch)["tracks"]
    with caplog.at_level(logging.WARNING, logger="tracker.model"):
        guided = _predict(model, batch, guidance_scale=3.0)["tracks"]
    assert caplog.text == ""
    assert not torch.allclose(plain, guided)
    assert torch.equal(plain[:, :, 0], guided[:, :, 0])


def test_predict_invalid_inputs_rejected():
    model = tiny_model()
    batch = make_batch(model.config)
    frames, points = batch["frames"], batch["query_coords"]
    with pytest.raises(ValueError, match="Resize the image"):
        model.predict(torch.rand(2, 3, 40, 40), points, "lift it")
    with pytest.raises(ValueError, match="empty instructions at positions \\[1\\]"):
        model.predict(frames, points, ["lift it", "  "])
    with pytest.raises(ValueError, match="query_coords must have shape"):
        model.predict(frames, points[..., :1], "lift it")
    with pytest.raises(TypeError, match="floating-point"):
        model.predict(frames, points.long(), "lift it")
    with pytest.raises(ValueError, match="num_inference_steps must be positive"):
        model.predict(frames, points, "lift it", num_inference_steps=0)
    with pytest.raises(ValueError, match="hand_query must have shape"):
        model.predict(frames, points, "lift it", hand_query=torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="has 2 hands but the model has embeddings for 1"):
        model.predict(frames, points, "lift it", hand_query=torch.zeros(2, 2, 3))


def test_predict_depth_required_with_use_depth():
    model = tiny_model(use_depth=True)
    batch = make_batch(model.config)
    with pytest.raises(ValueError, match="use_depth=True"):
        _predict(model, batch)
    out = _predict(model, batch, depth=batch["depth"])
    assert out["tracks"].shape == (2, 6, 5, 2)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _fitted_normalizer():
    normalizer = Normalizer()
    normalizer.track_mean.copy_(torch.tensor([-0.5, 0.25]))
    normalizer.track_std.copy_(torch.tensor([2.0, 3.0]))
    normalizer.hand_uvd_std.copy_(torch.tensor([4.0, 4.0, 0.1]))
    return normalizer


def test_save_load_round_trip_identical_predictions(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(trained_with_cfg=True, vit_name="vit_tiny_patch16_dinov3_qkvb")
    model = DiffusionIntentTracker(config, _fitted_normalizer())
    randomize_outputs(model)
    model.save_pretrained(tmp_path / "model", training_config={"train": {"max_steps": 7}})
    loaded = DiffusionIntentTracker.from_pretrained(tmp_path / "model")

    batch = make_batch(model.config)
    kwargs = dict(hand_query=hand_query(batch), guidance_scale=2.0)
    expected = _predict(model, batch, **kwargs)
    actual = _predict(loaded, batch, **kwargs)
    for key in ("tracks", "hand_uvd", "hand_rot6d"):
        assert torch.equal(expected[key], actual[key]), key
    assert loaded.config == model.config
    assert loaded.training_config == {"train": {"max_steps": 7}}
    assert torch.equal(loaded.normalizer.track_std, torch.tensor([2.0, 3.0]))
    assert not loaded.training


def test_saved_weights_leave_out_text_encoder(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    names = sorted(path.name for path in (tmp_path / "model").iterdir())
    assert names == [CONFIG_NAME, WEIGHTS_NAME]
    with safe_open(tmp_path / "model" / WEIGHTS_NAME, framework="pt") as handle:
        keys = list(handle.keys())
    assert not any(key.startswith("text.encoder.") for key in keys)
    assert "text.null_token" in keys
    assert "normalizer.track_std" in keys
    assert any(key.startswith("scene.vit.") for key in keys)


def test_save_replaces_existing_model_and_keeps_other_folders(tmp_path):
    first, second = tiny_model(seed=1), tiny_model(seed=2)
    first.save_pretrained(tmp_path / "model", training_config={"run": 1})
    second.save_pretrained(tmp_path / "model")
    loaded = DiffusionIntentTracker.from_pretrained(tmp_path / "model")
    assert torch.equal(loaded.context_proj.weight, second.context_proj.weight)
    assert not (tmp_path / "model" / TRAINING_CONFIG_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved tracker"):
        first.save_pretrained(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def _write_checkpoint(folder, tensors, config_fields):
    folder.mkdir()
    save_file(tensors, folder / WEIGHTS_NAME)
    document = {
        "architecture": "DiffusionIntentTracker",
        "format_version": 1,
        "tracker": config_fields,
    }
    (folder / CONFIG_NAME).write_text(json.dumps(document))


@pytest.mark.parametrize(
    "old_key",
    [
        "text_encoder.text_model.embeddings.token_embedding.weight",
        "siglip.vision_model.post_layernorm.weight",
        "diffusion_time_emb",
    ],
)
def test_load_old_architecture_rejected(tmp_path, old_key):
    tensors = {old_key: torch.zeros(4, 2), "track_head.weight": torch.zeros(2, 32)}
    _write_checkpoint(tmp_path / "old", tensors, tiny_config().to_dict())
    with pytest.raises(IncompatibleCheckpointError, match="older tracker architecture") as info:
        DiffusionIntentTracker.from_pretrained(tmp_path / "old")
    assert old_key in str(info.value)
    assert "retrain" in str(info.value)


def test_load_incompatible_config_rejected(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    config_path = tmp_path / "model" / CONFIG_NAME
    original = json.loads(config_path.read_text())

    document = json.loads(json.dumps(original))
    document["tracker"]["siglip_name"] = "google/siglip-base"
    config_path.write_text(json.dumps(document))
    with pytest.raises(IncompatibleCheckpointError, match=r"unknown field 'siglip_name'.*retrain"):
        DiffusionIntentTracker.from_pretrained(tmp_path / "model")

    document = json.loads(json.dumps(original))
    del document["tracker"]["num_steps"]
    config_path.write_text(json.dumps(document))
    with pytest.raises(IncompatibleCheckpointError, match="missing the fields \\['num_steps'\\]"):
        DiffusionIntentTracker.from_pretrained(tmp_path / "model")

    document = json.loads(json.dumps(original))
    document["tracker"]["num_steps"] = 8
    config_path.write_text(json.dumps(document))
    with pytest.raises(IncompatibleCheckpointError, match=r"shape mismatches.*time_embedding"):
        DiffusionIntentTracker.from_pretrained(tmp_path / "model")

    document = json.loads(json.dumps(original))
    document["format_version"] = 0
    config_path.write_text(json.dumps(document))
    with pytest.raises(IncompatibleCheckpointError, match="format_version 0"):
        DiffusionIntentTracker.from_pretrained(tmp_path / "model")


def test_load_pickled_weights_rejected_without_unpickling(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    # Not a valid pickle: loading it would fail loudly, so the message proves it was not read.
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(IncompatibleCheckpointError, match="never loaded"):
        DiffusionIntentTracker.from_pretrained(folder)


def test_load_missing_folder_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DiffusionIntentTracker.from_pretrained(tmp_path / "absent")


# --------------------------------------------------------------------------------------------
# Pretrained ViT weights
# --------------------------------------------------------------------------------------------


def test_vit_checkpoint_file_loads_weights(tmp_path):
    source, _ = create_vit("vit_tiny_patch16_dinov3_qkvb", 32, pretrained=False)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    torch.manual_seed(123)
    loaded, was_loaded = create_vit("vit_tiny_patch16_dinov3_qkvb", 32, True, str(path))
    assert was_loaded
    for (name, expected), actual in zip(
        source.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(expected, actual), name


def test_vit_checkpoint_missing_file_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="vit_checkpoint"):
        create_vit("vit_tiny_patch16_dinov3_qkvb", 32, True, str(tmp_path / "absent.safetensors"))


def test_vit_offline_falls_back_to_random_with_warning(monkeypatch, caplog):
    # HF_HUB_OFFLINE makes the build skip the hub; with no cached weights it must warn.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="tracker.backbone"):
        _, was_loaded = create_vit("vit_tiny_patch16_dinov3_qkvb", 32, pretrained=True)
    if was_loaded:
        assert "Hugging Face cache" in caplog.text
    else:
        assert "random weights" in caplog.text
        assert any(record.levelno == logging.WARNING for record in caplog.records)


def test_vit_unknown_name_rejected():
    with pytest.raises(ValueError, match="not a timm model"):
        create_vit("vit_nonexistent_patch16", 32, pretrained=False)
