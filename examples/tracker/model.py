"""DiffusionIntentTracker: diffusion over future point tracks and hand poses, given image and text.

Architecture, top to bottom:

- Scene: a timm ViT turns the frame into patch tokens (class and register tokens dropped),
  optionally plus a zero-initialised depth patch embedding. A Linear projects them to the
  model width and the 2D sin-cos encoding of each patch centre is added.
- Text: ``ditblocks.TextConditioner`` (frozen encoder, trainable projection, learned null token)
  gives text tokens and a key-padding mask. The context is the text tokens followed by the
  patch tokens, and the context mask is the text mask followed by an all-True patch mask.
- Trajectories: one token row per query point (and per hand), one token per slot 0..T, built by
  ``TrajectoryTokenizer``. With ``use_appearance`` each track row also gets the RGB value
  and the ViT feature sampled bilinearly at its query point, so the model can identify the
  object the point lies on.
- ``ditblocks.DiTUpdateFormer`` updates the rows with time and space attention and
  cross-attention to the context. The diffusion timestep enters through
  ``ditblocks.TimestepEmbedder`` as the adaLN conditioning ``c``.
- A final adaLN-modulated LayerNorm and two zero-initialised Linear heads predict the target of
  the scheduler's ``prediction_type`` for tracks (2 channels) and hands (9 channels).

The diffusion state is normalised by the model's ``Normalizer``: track displacement from slot 0
("track"), hand uvd displacement from slot 0 ("hand_uvd") and hand 6D rotation ("hand_rot6d").
Slot 0 is known (zero displacement and the present hand rotation), so it is pinned to its
clean value both in training and in sampling, and the loss covers slots 1..T.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from ditblocks import DiTUpdateFormer, TextConditioner, TimestepEmbedder, modulate, sample

from .backbone import SceneEncoder
from .model_config import TrackerConfig, resolve_text_encoder
from .model_inputs import check_batch, check_predict_inputs
from .normalizer import Normalizer
from .tokens import (
    HAND_CHANNELS,
    TRACK_CHANNELS,
    TrajectoryTokenizer,
    patch_centres,
    sample_at_points,
    sincos_position_2d,
)

__all__ = ["DiffusionIntentTracker", "TrackerConfig"]

logger = logging.getLogger(__name__)

# Bound, in standard deviations of the normalised targets, on the clean-sample estimate of
# DDIM sampling with an epsilon model. The largest hand and track motions of the generated
# episodes are about 5 standard deviations.
X0_CLIP_RANGE = 10.0


class DiffusionIntentTracker(nn.Module):
    """Predict where query points and the hand move, given a frame and an instruction.

    Args:
        config: Architecture and diffusion settings.
        normalizer: Statistics of the training data; an identity ``Normalizer`` when None.
            It is a submodule, so its buffers are saved with the weights.
        text_tokenizer: Tokenizer to use instead of loading ``config.text_encoder``; give it
            together with ``text_encoder_model``.
        text_encoder_model: Encoder to use instead of loading ``config.text_encoder``.
        load_vit_weights: Look for pretrained ViT weights. None follows
            ``config.vit_pretrained``; ``from_pretrained`` passes False because the checkpoint
            contains the ViT weights.

    Examples:
        >>> config = TrackerConfig.from_size("demo", vit_pretrained=False)
        >>> model = DiffusionIntentTracker(config)  # doctest: +SKIP
        >>> losses = model.compute_loss(batch, cfg_dropout_prob=0.1)  # doctest: +SKIP
        >>> out = model.predict(frames, query_coords, ["lift the red cube"])  # doctest: +SKIP
        >>> out["tracks"].shape  # (B, N, T + 1, 2) pixels  # doctest: +SKIP
    """

    def __init__(
        self,
        config: TrackerConfig,
        normalizer: Normalizer | None = None,
        *,
        text_tokenizer: Any = None,
        text_encoder_model: nn.Module | None = None,
        load_vit_weights: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, TrackerConfig):
            raise TypeError(f"config must be a TrackerConfig, got {type(config).__name__}.")
        config.validate()
        self.config = config
        self.training_config: dict[str, Any] | None = None
        hidden = config.hidden_size

        pretrained = config.vit_pretrained if load_vit_weights is None else load_vit_weights
        self.scene = SceneEncoder(
            config.vit_name,
            config.image_size,
            pretrained=pretrained,
            checkpoint=config.vit_checkpoint if pretrained else None,
            use_depth=config.use_depth,
        )
        self.context_proj = nn.Linear(self.scene.width, hidden)
        self.register_buffer(
            "patch_positions",
            sincos_position_2d(
                patch_centres(self.scene.grid_size, self.scene.patch_size),
                config.image_size,
                hidden,
            ),
            persistent=False,
        )

        self.text = TextConditioner(
            hidden,
            resolve_text_encoder(config.text_encoder),
            max_length=config.max_text_length,
            tokenizer=text_tokenizer,
            encoder=text_encoder_model,
        )

        appearance_dim = 0
        if config.use_appearance:
            appearance_dim = self.scene.width + 3 + (1 if config.use_depth else 0)
        self.trajectory_tokens = TrajectoryTokenizer(
            hidden, config.num_slots, config.image_size, appearance_dim, config.max_hands
        )
        self.timestep_embedder = TimestepEmbedder(hidden)
        self.text_embedder = None
        if config.pooled_text_conditioning:
            self.text_embedder = nn.Sequential(
                nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
        self.transformer = DiTUpdateFormer(
            depth=config.depth,
            hidden_size=hidden,
            num_heads=config.num_heads,
            context_dim=hidden,
            mlp_ratio=config.mlp_ratio,
            qk_norm=config.qk_norm,
        )

        # Final layer as in DiT: LayerNorm without affine, shift and scale from c, then heads.
        # The modulation and the heads start at zero, so the first prediction is all zeros.
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.track_head = nn.Linear(hidden, TRACK_CHANNELS)
        self.hand_head = nn.Linear(hidden, HAND_CHANNELS)
        for layer in (self.final_modulation[-1], self.track_head, self.hand_head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

        self.normalizer = normalizer if normalizer is not None else Normalizer()
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            # The normalised data has unit variance, not a [-1, 1] range, so no clipping.
            clip_sample=False,
        )

    # ----------------------------------------------------------------------------------------
    # Vision backbone freezing
    # ----------------------------------------------------------------------------------------

    def freeze_vit(self) -> None:
        """Stop gradients into the ViT weights (the depth embedding keeps training)."""
        self.scene.set_trainable(False)

    def unfreeze_vit(self) -> None:
        """Let the ViT weights train."""
        self.scene.set_trainable(True)

    @property
    def vit_frozen(self) -> bool:
        """Whether the ViT weights are frozen."""
        return not self.scene.trainable

    @property
    def device(self) -> torch.device:
        """Device of the trainable weights."""
        return self.context_proj.weight.device

    # ----------------------------------------------------------------------------------------
    # Conditioning
    # ----------------------------------------------------------------------------------------

    def encode_conditions(
        self,
        frames: torch.Tensor,
        query_coords: torch.Tensor,
        texts: list[str],
        depth: torch.Tensor | None = None,
        hand_query: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        null_text: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Encode the scene, the text and the per-row query parts once per sample.

        Args:
            frames: (B, 3, S, S) RGB in [0, 1].
            query_coords: (B, N, 2) query points in pixels.
            texts: B instructions.
            depth: (B, 1, S, S) depth in metres, used with ``use_depth``.
            hand_query: (B, H, 3 or 9) present hand state (u px, v px, depth m, rotation),
                or None for no hand rows. Only u, v and depth enter the hand tokens.
            drop_text: (B,) bool, True replaces the sample's text by the null token.
            null_text: Use the null token for every sample (the unconditional branch).

        Returns:
            A dict with ``context`` (B, L + P, hidden), ``context_mask`` (B, L + P) bool,
            ``track_rows`` (B, N, hidden) and, with hands, ``hand_rows`` (B, H, hidden).
        """
        patches = self.scene(frames, depth if self.config.use_depth else None)  # (B, P, width)
        return self.conditions_from_patches(
            patches, frames, query_coords, texts, depth, hand_query, drop_text, null_text
        )

    def conditions_from_patches(
        self,
        patches: torch.Tensor,
        frames: torch.Tensor,
        query_coords: torch.Tensor,
        texts: list[str],
        depth: torch.Tensor | None,
        hand_query: torch.Tensor | None,
        drop_text: torch.Tensor | None = None,
        null_text: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Build the conditions of ``encode_conditions`` from already computed ViT patches."""
        batch = frames.shape[0]
        scene_tokens = self.context_proj(patches) + self.patch_positions.to(patches.dtype)

        if null_text:
            text_tokens, text_mask = self.text.null(batch)
        else:
            text_tokens, text_mask = self.text.encode(texts, drop=drop_text)
        patch_mask = torch.ones(scene_tokens.shape[:2], dtype=torch.bool, device=frames.device)
        text_tokens = text_tokens.to(scene_tokens.dtype)
        conditions = {
            "context": torch.cat([text_tokens, scene_tokens], dim=1),
            "context_mask": torch.cat([text_mask, patch_mask], dim=1),
        }
        if self.text_embedder is not None:
            conditions["text_pooled"] = _masked_mean(text_tokens, text_mask)

        appearance = None
        if self.config.use_appearance:
            appearance = self._appearance(patches, frames, query_coords, depth)
        conditions["track_rows"] = self.trajectory_tokens.query_tokens(query_coords, appearance)
        if hand_query is not None:
            conditions["hand_rows"] = self.trajectory_tokens.hand_query_tokens(hand_query[..., :3])
        return conditions

    def _appearance(
        self,
        patches: torch.Tensor,
        frames: torch.Tensor,
        query_coords: torch.Tensor,
        depth: torch.Tensor | None,
    ) -> torch.Tensor:
        """Sample ViT features, RGB and (with use_depth) depth at the query points."""
        size = self.config.image_size
        parts = [
            sample_at_points(self.scene.feature_map(patches), query_coords, size),
            sample_at_points(frames.to(patches.dtype), query_coords, size),
        ]
        if self.config.use_depth:
            parts.append(sample_at_points(depth.to(patches.dtype), query_coords, size))
        return torch.cat(parts, dim=-1)  # (B, N, width + 3 [+ 1])

    # ----------------------------------------------------------------------------------------
    # Denoiser
    # ----------------------------------------------------------------------------------------

    def forward(
        self,
        noisy_tracks: torch.Tensor,
        timesteps: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        noisy_hands: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the denoiser once.

        Args:
            noisy_tracks: (B, N, T + 1, 2) noisy normalised displacements.
            timesteps: (B,) diffusion timesteps.
            conditions: Output of ``encode_conditions``.
            noisy_hands: (B, H, T + 1, 9) noisy normalised hand states; needs ``hand_rows``.

        Returns:
            The predictions in the scheduler's ``prediction_type`` for the tracks
            (B, N, T + 1, 2) and the hands (B, H, T + 1, 9), or None without hands.
        """
        hand_rows = conditions.get("hand_rows") if noisy_hands is not None else None
        tokens = self.trajectory_tokens(
            conditions["track_rows"], noisy_tracks, hand_rows, noisy_hands
        )
        c = self.timestep_embedder(timesteps, batch_size=tokens.shape[0])
        if self.text_embedder is not None:
            c = c + self.text_embedder(conditions["text_pooled"])
        hidden = self.transformer(
            tokens, conditions["context"], c, context_mask=conditions["context_mask"]
        )

        shift, scale = self.final_modulation(c)[:, None, None, :].chunk(2, dim=-1)
        hidden = modulate(self.final_norm(hidden), shift, scale)

        num_points = noisy_tracks.shape[1]
        track_prediction = self.track_head(hidden[:, :num_points])
        hand_prediction = None
        if hand_rows is not None:
            hand_prediction = self.hand_head(hidden[:, num_points:])
        return track_prediction, hand_prediction

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def normalized_targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the clean normalised diffusion state of a batch.

        Returns:
            Tracks (B, N, T + 1, 2) and, with hands in the batch, hands (B, H, T + 1, 9)
            as uvd displacement from slot 0 followed by the 6D rotation.
        """
        tracks = self.normalizer.normalize("track", batch["track_disp"])
        hand_uvd = batch.get("hand_uvd")
        if not self.config.use_hands or hand_uvd is None:
            return tracks, None
        displacement = hand_uvd - hand_uvd[:, :, :1]
        hands = torch.cat(
            [
                self.normalizer.normalize("hand_uvd", displacement),
                self.normalizer.normalize("hand_rot6d", batch["hand_rot6d"]),
            ],
            dim=-1,
        )
        return tracks, hands

    def compute_loss(
        self,
        batch: dict[str, Any],
        cfg_dropout_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the denoising losses of one batch.

        Each sample gets a uniform random diffusion timestep and Gaussian noise, added with
        diffusers' ``DDPMScheduler.add_noise``. Slot 0 stays at its clean value, as in
        sampling. The network target is the noise (``epsilon``), the velocity
        (``v_prediction``, from ``DDPMScheduler.get_velocity``) or the clean state
        (``sample``), and the mean squared error covers slots 1..T.

        Args:
            batch: A collated batch with ``frames``, ``query_coords``, ``track_disp``,
                ``instruction`` and, as the config needs, ``depth``, ``hand_uvd`` and
                ``hand_rot6d``.
            cfg_dropout_prob: Probability per sample of replacing its instruction by the null
                token, for classifier-free guidance. Set ``config.trained_with_cfg`` when
                training with it.
            generator: Generator for timesteps, noise and dropout (on the generator's device).

        Returns:
            Scalar tensors ``track_loss``, ``hand_uvd_loss``, ``hand_rot_loss`` and
            ``total_loss``. The hand losses are zero when the model has no hands or when the
            batch's hand rows were left out (probability ``config.hand_drop_prob``).

        Raises:
            ValueError: If the batch lacks an entry or has a wrong shape, or
                ``cfg_dropout_prob`` is outside [0, 1].
        """
        config = self.config
        check_batch(
            batch,
            config.image_size,
            config.num_slots,
            config.use_depth,
            config.use_hands,
            config.max_hands,
        )
        if not 0.0 <= cfg_dropout_prob <= 1.0:
            raise ValueError(
                f"cfg_dropout_prob={cfg_dropout_prob} is invalid; expected a value in [0, 1]."
            )

        device = self.device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        size = batch["frames"].shape[0]
        draw_device = generator.device if generator is not None else device

        use_hands = config.use_hands
        # NOTE: the hand rows are left out for the whole batch, not per sample, because the
        # DiTUpdateFormer has no row mask. Such a batch reports hand losses of zero, which
        # lowers averaged hand losses by about hand_drop_prob.
        if use_hands and self.training and config.hand_drop_prob > 0:
            draw = torch.rand((), generator=generator, device=draw_device)
            use_hands = bool(draw >= config.hand_drop_prob)
        clean_tracks, clean_hands = self.normalized_targets(batch)
        if not use_hands:
            clean_hands = None

        drop = None
        if cfg_dropout_prob > 0:
            drop = torch.rand(size, generator=generator, device=draw_device) < cfg_dropout_prob
            drop = drop.to(device)

        timesteps = torch.randint(
            0, config.num_train_timesteps, (size,), generator=generator, device=draw_device
        ).to(device)
        hand_query = None
        if clean_hands is not None:
            hand_query = batch["hand_uvd"][:, :, 0]
        conditions = self.encode_conditions(
            batch["frames"],
            batch["query_coords"],
            batch["instruction"],
            batch.get("depth"),
            hand_query,
            drop_text=drop,
        )

        noisy_tracks, track_target = self._noise(clean_tracks, timesteps, generator, draw_device)
        noisy_hands, hand_target = None, None
        if clean_hands is not None:
            noisy_hands, hand_target = self._noise(clean_hands, timesteps, generator, draw_device)
        track_prediction, hand_prediction = self(noisy_tracks, timesteps, conditions, noisy_hands)

        losses = {"track_loss": _future_mse(track_prediction, track_target)}
        zero = losses["track_loss"].new_zeros(())
        losses["hand_uvd_loss"] = zero
        losses["hand_rot_loss"] = zero
        if hand_prediction is not None:
            losses["hand_uvd_loss"] = _future_mse(hand_prediction[..., :3], hand_target[..., :3])
            losses["hand_rot_loss"] = _future_mse(hand_prediction[..., 3:], hand_target[..., 3:])
        hand_total = losses["hand_uvd_loss"] + losses["hand_rot_loss"]
        losses["total_loss"] = losses["track_loss"] + config.hand_loss_weight * hand_total
        return losses

    def _noise(
        self,
        clean: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None,
        draw_device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise a clean state, pin slot 0 and return (noisy input, network target)."""
        noise = torch.randn(clean.shape, generator=generator, device=draw_device)
        noise = noise.to(device=clean.device, dtype=clean.dtype)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        noisy = torch.cat([clean[:, :, :1], noisy[:, :, 1:]], dim=2)

        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = clean
        return noisy, target

    # ----------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self,
        frames: torch.Tensor,
        query_coords: torch.Tensor,
        text: str | list[str],
        depth: torch.Tensor | None = None,
        hand_query: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 20,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sample future tracks (and hand poses) with DDIM and optional guidance.

        The scene and the text are encoded once, and each DDIM step runs only the trajectory
        transformer. The sampler is diffusers' ``DDIMScheduler`` with
        ``timestep_spacing="trailing"``, built from the training scheduler's config. Slot 0 is
        pinned to the known present state. The model runs in eval mode and returns to its
        previous mode afterwards.

        Classifier-free guidance runs when ``guidance_scale != 1`` and the model was trained
        with text dropout (``config.trained_with_cfg``); otherwise the scale is ignored with a
        logged warning, because the null token of a model trained without dropout is
        meaningless.

        Args:
            frames: (B, 3, S, S) RGB in [0, 1], S = ``config.image_size``.
            query_coords: (B, N, 2) query points (x, y) in pixels.
            text: One instruction for every sample, or a list of B instructions.
            depth: (B, 1, S, S) depth in metres; required with ``use_depth``.
            hand_query: (B, H, 3) present hand (u px, v px, depth m), or (B, H, 9) with the 6D
                rotation appended, which then pins the rotation at slot 0. None, or a model
                built with ``use_hands=False``, predicts tracks only.
            guidance_scale: Classifier-free guidance scale; 1 turns guidance off.
            num_inference_steps: DDIM steps.
            generator: Generator of the initial noise, on the model's device.

        Returns:
            ``tracks`` (B, N, T + 1, 2) absolute pixel positions (slot 0 is the query); with a
            hand query and ``use_hands`` also ``hand_uvd`` (B, H, T + 1, 3) absolute
            (u px, v px, depth m) and ``hand_rot6d`` (B, H, T + 1, 6).

        Raises:
            ValueError, TypeError: On invalid inputs, before any compute.
        """
        config = self.config
        texts = check_predict_inputs(
            frames,
            query_coords,
            text,
            depth,
            hand_query,
            config.image_size,
            config.use_depth,
            guidance_scale,
            num_inference_steps,
            config.max_hands,
        )
        guided = guidance_scale != 1.0
        if guided and not config.trained_with_cfg:
            logger.warning(
                "guidance_scale=%s is ignored: this model was trained without text dropout "
                "(trained_with_cfg=False), so it has no unconditional prediction to guide with.",
                guidance_scale,
            )
            guided = False

        was_training = self.training
        self.eval()
        try:
            return self._sample(
                frames,
                query_coords,
                texts,
                depth,
                hand_query,
                guidance_scale if guided else 1.0,
                num_inference_steps,
                generator,
            )
        finally:
            self.train(was_training)

    def _sample(
        self,
        frames: torch.Tensor,
        query_coords: torch.Tensor,
        texts: list[str],
        depth: torch.Tensor | None,
        hand_query: torch.Tensor | None,
        guidance_scale: float,
        num_inference_steps: int,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        device = self.device
        frames = frames.to(device)
        query_coords = query_coords.to(device=device, dtype=torch.float32)
        depth = depth.to(device) if depth is not None and self.config.use_depth else None
        if hand_query is not None and self.config.use_hands:
            hand_query = hand_query.to(device=device, dtype=torch.float32)
        else:
            hand_query = None

        patches = self.scene(frames, depth)
        cond = self.conditions_from_patches(patches, frames, query_coords, texts, depth, hand_query)
        uncond = None
        if guidance_scale != 1.0:
            uncond = self.conditions_from_patches(
                patches, frames, query_coords, texts, depth, hand_query, null_text=True
            )

        layout = _StateLayout(frames.shape[0], query_coords.shape[1], hand_query, self.config)
        known, known_mask = self._known_slot0(layout, hand_query, device)

        def denoise(x: torch.Tensor, t: torch.Tensor, conditions: dict) -> torch.Tensor:
            tracks, hands = layout.unpack(x)
            track_prediction, hand_prediction = self(tracks, t, conditions, hands)
            return layout.pack(track_prediction, hand_prediction)

        scheduler = DDIMScheduler.from_config(
            self.noise_scheduler.config, timestep_spacing="trailing", **self._x0_clipping()
        )
        state = sample(
            denoise,
            scheduler,
            layout.shape,
            cond,
            uncond=uncond,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            known=known,
            known_mask=known_mask,
            generator=generator,
            device=device,
            dtype=torch.float32,
        )
        return self._unnormalize(layout, state, query_coords, hand_query)

    def _x0_clipping(self) -> dict[str, Any]:
        """Return DDIM options that bound the predicted clean sample of an epsilon model.

        With the cosine schedule, alpha_bar at the noisiest timestep is about 1e-9. DDIM's
        clean-sample estimate from an epsilon prediction divides by its square root, so a
        small error in the first step's epsilon becomes a displacement of thousands of
        pixels. The targets are normalised to unit standard deviation per channel, so
        clipping the estimate at X0_CLIP_RANGE standard deviations leaves real motion alone.
        v-prediction and sample prediction do not divide by alpha_bar and need no clipping.
        """
        if self.config.prediction_type != "epsilon":
            return {}
        return {"clip_sample": True, "clip_sample_range": X0_CLIP_RANGE}

    def _known_slot0(
        self, layout: _StateLayout, hand_query: torch.Tensor | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the flat known values and mask that pin slot 0 of every row."""
        tracks = torch.zeros(layout.tracks_shape, device=device)
        track_mask = torch.zeros(layout.tracks_shape, dtype=torch.bool, device=device)
        tracks[:, :, 0] = self.normalizer.normalize("track", tracks[:, :, 0])
        track_mask[:, :, 0] = True

        hands, hand_mask = None, None
        if hand_query is not None:
            hands = torch.zeros(layout.hands_shape, device=device)
            hand_mask = torch.zeros(layout.hands_shape, dtype=torch.bool, device=device)
            hands[:, :, 0, :3] = self.normalizer.normalize("hand_uvd", hands[:, :, 0, :3])
            hand_mask[:, :, 0, :3] = True
            if hand_query.shape[-1] == 9:
                hands[:, :, 0, 3:] = self.normalizer.normalize("hand_rot6d", hand_query[..., 3:])
                hand_mask[:, :, 0, 3:] = True
        return layout.pack(tracks, hands), layout.pack(track_mask, hand_mask)

    def _unnormalize(
        self,
        layout: _StateLayout,
        state: torch.Tensor,
        query_coords: torch.Tensor,
        hand_query: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Turn the sampled normalised state into absolute pixel tracks and hand poses."""
        tracks, hands = layout.unpack(state)
        displacement = self.normalizer.unnormalize("track", tracks)
        # Slot 0 is exactly the query: unnormalising the pinned value can be off by rounding.
        displacement[:, :, 0] = 0.0
        result = {"tracks": query_coords[:, :, None, :] + displacement}

        if hands is not None:
            uvd = self.normalizer.unnormalize("hand_uvd", hands[..., :3])
            uvd[:, :, 0] = 0.0
            rotation = self.normalizer.unnormalize("hand_rot6d", hands[..., 3:])
            if hand_query.shape[-1] == 9:
                rotation[:, :, 0] = hand_query[..., 3:]
            result["hand_uvd"] = hand_query[:, :, None, :3] + uvd
            result["hand_rot6d"] = rotation
        return result

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def save_pretrained(
        self, directory: str | os.PathLike, training_config: dict[str, Any] | None = None
    ) -> None:
        """Save config, weights (without the frozen text encoder) and training config.

        The folder is written under a temporary name and renamed into place, so an existing
        checkpoint there is replaced only by a complete one.

        Args:
            directory: Output folder.
            training_config: The trainer's resolved config; defaults to ``self.training_config``.
        """
        from .pretrained import save_tracker

        save_tracker(self, directory, training_config)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        map_location: str | torch.device = "cpu",
        text_tokenizer: Any = None,
        text_encoder_model: nn.Module | None = None,
    ) -> DiffusionIntentTracker:
        """Load a model saved with ``save_pretrained``.

        The text encoder is rebuilt from ``config.text_encoder`` (or the given objects), the
        ViT is built without downloading weights, and every other weight comes from the
        checkpoint. Nothing is unpickled.

        Args:
            directory: Folder written by ``save_pretrained``.
            map_location: Device to load the weights on.
            text_tokenizer: Tokenizer to use instead of loading ``config.text_encoder``.
            text_encoder_model: Encoder to use instead of loading ``config.text_encoder``.

        Returns:
            The model in eval mode, with ``training_config`` set when the folder has one.

        Raises:
            FileNotFoundError: If the folder or one of its files is missing.
            ValueError: If the checkpoint comes from an older architecture or an
                incompatible config. The message names what was found.
        """
        from .pretrained import load_tracker

        return load_tracker(
            cls,
            directory,
            map_location,
            text_tokenizer=text_tokenizer,
            text_encoder_model=text_encoder_model,
        )


class _StateLayout:
    """Pack tracks and hands into one flat (B, D) diffusion state for the sampler, and back."""

    def __init__(
        self, batch: int, num_points: int, hand_query: torch.Tensor | None, config: TrackerConfig
    ) -> None:
        slots = config.num_slots
        self.batch = batch
        self.tracks_shape = (batch, num_points, slots, TRACK_CHANNELS)
        self.hands_shape = None
        if hand_query is not None:
            self.hands_shape = (batch, hand_query.shape[1], slots, HAND_CHANNELS)
        self.track_size = num_points * slots * TRACK_CHANNELS
        hand_size = 0 if self.hands_shape is None else hand_query.shape[1] * slots * HAND_CHANNELS
        self.shape = (batch, self.track_size + hand_size)

    def pack(self, tracks: torch.Tensor, hands: torch.Tensor | None) -> torch.Tensor:
        flat = [tracks.reshape(tracks.shape[0], -1)]
        if hands is not None:
            flat.append(hands.reshape(hands.shape[0], -1))
        return torch.cat(flat, dim=1)

    def unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = state.shape[0]
        tracks = state[:, : self.track_size].reshape(batch, *self.tracks_shape[1:])
        if self.hands_shape is None:
            return tracks, None
        hands = state[:, self.track_size :].reshape(batch, *self.hands_shape[1:])
        return tracks, hands


def _future_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over slots 1..T of (B, rows, T + 1, C) tensors, in float32."""
    return F.mse_loss(prediction[:, :, 1:].float(), target[:, :, 1:].float())


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average (B, L, C) tokens over the positions where the (B, L) mask is True."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
