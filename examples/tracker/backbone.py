"""Vision backbone of the tracker: a timm ViT, its pretrained weights and the depth embedding.

``SceneEncoder`` turns an RGB frame (and optionally its depth) into the ViT's patch tokens.
Pretrained weights come, in this order, from ``vit_checkpoint`` (a local file), the Hugging
Face cache, or the hub. With ``HF_HUB_OFFLINE=1`` the hub is skipped, so a machine without
network falls back to random initialisation at once. Without that variable, a machine without
network spends about a minute in huggingface_hub's retries before the fallback (measured with
huggingface_hub 2.4 on a host whose DNS lookups fail). Every fallback logs a warning.

Depth enters through a depth patch embedding: a Conv2d(1, width, patch, patch) over the depth
map in metres, zero-initialised and added to the ViT's output patch tokens. Zero
initialisation means that a model starts exactly as its RGB-only counterpart and learns how
much depth to use.
"""

from __future__ import annotations

import logging
import os

import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from torch import nn

__all__ = ["SceneEncoder", "create_vit"]

logger = logging.getLogger(__name__)

# File names timm looks for in a hub repository, in its order of preference.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_offline() -> bool:
    """Return True when huggingface_hub must not use the network (``HF_HUB_OFFLINE``)."""
    from_env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return from_env or bool(hub_constants.HF_HUB_OFFLINE)


def create_vit(
    name: str,
    image_size: int,
    pretrained: bool,
    checkpoint: str | None = None,
) -> tuple[nn.Module, bool]:
    """Create a timm ViT without classifier head, with pretrained weights when they exist.

    Args:
        name: timm model name, for example ``vit_small_patch16_dinov3``.
        image_size: Side of the square input in pixels; the position embedding is resized.
        pretrained: Look for pretrained weights (file, cache, then hub).
        checkpoint: Local weight file. timm converts the original DINOv3 key names.

    Returns:
        The model and whether pretrained weights were loaded.

    Raises:
        FileNotFoundError: If ``checkpoint`` is given but does not exist.
        ValueError: If ``name`` is not a timm model.
    """
    if name not in timm.list_models(name):
        raise ValueError(
            f"vit_name={name!r} is not a timm model; list them with timm.list_models('*vit*')."
        )
    kwargs = dict(img_size=image_size, num_classes=0)

    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"vit_checkpoint={checkpoint!r} does not exist; give the path of a local "
                ".safetensors file or set vit_checkpoint to None."
            )
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint), **kwargs
        )
        logger.info("Loaded ViT %s weights from %s.", name, checkpoint)
        return model, True

    if not pretrained:
        logger.info("Built ViT %s with random weights (vit_pretrained=False).", name)
        return timm.create_model(name, pretrained=False, **kwargs), False

    cached = _cached_weights(name)
    if cached is not None:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=cached), **kwargs
        )
        logger.info("Loaded ViT %s weights from the Hugging Face cache (%s).", name, cached)
        return model, True

    if hub_offline():
        logger.warning(
            "ViT %s has no weights in the Hugging Face cache and HF_HUB_OFFLINE is set; using "
            "random weights. Set vit_checkpoint to a local weight file to load them.",
            name,
        )
        return timm.create_model(name, pretrained=False, **kwargs), False

    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as error:
        logger.warning(
            "Could not download ViT %s weights (%s: %s); using random weights. Set "
            "vit_checkpoint to a local weight file, or HF_HUB_OFFLINE=1 to skip the download.",
            name,
            type(error).__name__,
            error,
        )
        return timm.create_model(name, pretrained=False, **kwargs), False
    logger.info("Loaded ViT %s weights from the Hugging Face hub.", name)
    return model, True


def _cached_weights(name: str) -> str | None:
    """Return the path of the model's hub weights in the local cache, without network."""
    hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if not hub_id:
        return None
    for filename in HUB_WEIGHT_FILES:
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str):
            return path
    return None


class SceneEncoder(nn.Module):
    """Encode a frame into ViT patch tokens, with an optional depth patch embedding.

    Frames are RGB in [0, 1]; the encoder applies the ViT's own mean/std normalisation.
    Class and register tokens are dropped, so the output contains patch tokens only, row-major.

    Args:
        vit_name: timm model name.
        image_size: Side of the square input in pixels, a multiple of the patch size.
        pretrained: Look for pretrained weights (see ``create_vit``).
        checkpoint: Local weight file, or None.
        use_depth: Add the depth patch embedding.
    """

    def __init__(
        self,
        vit_name: str,
        image_size: int,
        pretrained: bool = True,
        checkpoint: str | None = None,
        use_depth: bool = False,
    ) -> None:
        super().__init__()
        self.vit, self.loaded_pretrained = create_vit(vit_name, image_size, pretrained, checkpoint)
        self.image_size = image_size
        self.width = int(self.vit.num_features)
        self.num_prefix_tokens = int(getattr(self.vit, "num_prefix_tokens", 0))

        patch = self.vit.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        if image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size={image_size} is not a multiple of the patch size {self.patch_size} "
                f"of {vit_name}; use a multiple such as {image_size // self.patch_size * 16}."
            )
        self.grid_size = (image_size // self.patch_size, image_size // self.patch_size)

        cfg = self.vit.pretrained_cfg
        mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32)
        # Constants of the ViT, rebuilt from its name, so they are not saved.
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1), persistent=False)

        self.depth_embed = None
        if use_depth:
            self.depth_embed = nn.Conv2d(1, self.width, self.patch_size, self.patch_size)
            nn.init.zeros_(self.depth_embed.weight)
            nn.init.zeros_(self.depth_embed.bias)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens per frame."""
        return self.grid_size[0] * self.grid_size[1]

    def set_trainable(self, trainable: bool) -> None:
        """Freeze (False) or unfreeze (True) the ViT weights; the depth embedding stays."""
        for parameter in self.vit.parameters():
            parameter.requires_grad_(trainable)

    @property
    def trainable(self) -> bool:
        """Whether any ViT weight receives gradients."""
        return any(parameter.requires_grad for parameter in self.vit.parameters())

    def forward(self, frames: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
        """Encode frames.

        Args:
            frames: (B, 3, S, S) RGB in [0, 1].
            depth: (B, 1, S, S) depth in metres; required when built with ``use_depth``.

        Returns:
            (B, rows * cols, width) patch tokens.
        """
        pixels = (frames - self.pixel_mean) / self.pixel_std
        tokens = self.vit.forward_features(pixels)
        tokens = tokens[:, self.num_prefix_tokens :]  # (B, P, width)

        if self.depth_embed is not None:
            depth_tokens = self.depth_embed(depth.to(tokens.dtype))  # (B, width, rows, cols)
            tokens = tokens + depth_tokens.flatten(2).transpose(1, 2)
        return tokens

    def feature_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Reshape (B, P, width) patch tokens into a (B, width, rows, cols) map."""
        rows, cols = self.grid_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.width, rows, cols)
