"""DiTUpdateFormer: a factorized space-time transformer over (B, N, T, C) tokens.

Each layer runs three adaLN-Zero blocks, all conditioned on the same ``c``:

1. cross-attention of all ``N * T`` tokens of a sample to its context (scene and text),
2. spatial self-attention across the ``N`` points at each step ``t``,
3. temporal self-attention across the ``T`` steps of each point, optionally causal.

Factorizing space and time costs ``O(N^2 T + T^2 N)`` attention per layer instead of
``O((N T)^2)`` for full attention over all tokens.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ditblocks._checks import check_bool_mask, check_tensor
from ditblocks.attention import QkNorm
from ditblocks.blocks import DiTAttnBlock, DiTCrossAttnBlock

__all__ = ["DiTUpdateFormer", "DiTUpdateLayer"]


class DiTUpdateLayer(nn.Module):
    """One DiTUpdateFormer layer: cross-attention, spatial attention, temporal attention.

    Args:
        hidden_size: Token width.
        num_heads: Attention heads of every block.
        context_dim: Width of the context tokens.
        mlp_ratio: MLP width relative to ``hidden_size``.
        add_space_attn: Whether the layer has the spatial attention block.
        qk_norm: Per-head query/key normalisation, see [`Attention`][ditblocks.Attention].
        qkv_bias: Whether the query, key and value projections have a bias.
        fused_attn: Use scaled_dot_product_attention (True) or the reference path (False).
        factory: ``device`` and ``dtype`` of the parameters.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        context_dim: int,
        mlp_ratio: float,
        add_space_attn: bool,
        qk_norm: QkNorm,
        qkv_bias: bool,
        fused_attn: bool,
        factory: dict,
    ) -> None:
        super().__init__()
        options = {
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "qk_norm": qk_norm,
            "fused_attn": fused_attn,
            **factory,
        }
        self.cross_block = DiTCrossAttnBlock(hidden_size, context_dim, num_heads, **options)
        self.space_block = (
            DiTAttnBlock(hidden_size, num_heads, **options) if add_space_attn else None
        )
        self.time_block = DiTAttnBlock(hidden_size, num_heads, **options)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        c: torch.Tensor,
        context_mask: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        """Update ``x`` (B, N, T, C) given the context and ``c`` of shape (B, 1, T or 1, C)."""
        x = self.cross_block(x, context, c, context_mask=context_mask)

        if self.space_block is not None:
            # Spatial attention runs across N, so N becomes the sequence axis: (B, T, N, C).
            x = self.space_block(x.transpose(1, 2), c.transpose(1, 2)).transpose(1, 2)

        return self.time_block(x, c, is_causal=causal)  # attention across T: (B, N, T, C)


class DiTUpdateFormer(nn.Module):
    """Factorized space-time transformer whose every block is conditioned through adaLN-Zero.

    Tokens are ``(B, N, T, C)``: N points (tracks, then hands) by T time steps. The layout is
    kept between blocks and rearranged only around attention.

    Args:
        depth: Number of layers.
        hidden_size: Width of the tokens inside the transformer and of ``c``.
        num_heads: Attention heads of every block.
        input_dim: Width of the input tokens. A Linear projects them to ``hidden_size`` when the
            widths differ; otherwise there is no input projection.
        output_dim: Width of the output tokens. A Linear projects to it when it differs from
            ``hidden_size``; otherwise there is no output projection.
        context_dim: Width of the context tokens; defaults to ``hidden_size``.
        mlp_ratio: MLP width relative to ``hidden_size``.
        add_space_attn: Whether each layer attends across points. Without it the points
            interact only through the shared context.
        qk_norm: Per-head query/key normalisation, see [`Attention`][ditblocks.Attention].
        gradient_checkpointing: Recompute each layer in the backward pass instead of storing
            its activations, in training mode only.
        qkv_bias: Whether the query, key and value projections have a bias.
        fused_attn: Use scaled_dot_product_attention (True) or the reference path (False).
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Shape:
        - tokens: ``(B, N, T, input_dim)``
        - context: ``(B, M, context_dim)``
        - c: ``(B, hidden_size)`` or ``(B, T, hidden_size)``; with per-step conditioning, the
          spatial rows of step ``t`` and the temporal position ``t`` get the t-th vector.
        - context_mask: ``(B, M)`` bool, True where a context token may be attended.
        - output: ``(B, N, T, output_dim)``

    Examples:
        >>> import torch
        >>> from ditblocks import DiTUpdateFormer, TimestepEmbedder
        >>> model = DiTUpdateFormer(depth=2, hidden_size=64, num_heads=4, input_dim=2,
        ...                         output_dim=2, context_dim=32)
        >>> tokens = torch.randn(3, 16, 8, 2)         # 16 points, 8 steps, (dx, dy)
        >>> context = torch.randn(3, 20, 32)          # scene and text tokens
        >>> mask = torch.ones(3, 20, dtype=torch.bool)
        >>> c = TimestepEmbedder(64)(torch.tensor([10, 500, 999]))
        >>> model(tokens, context, c, context_mask=mask, causal=True).shape
        torch.Size([3, 16, 8, 2])
    """

    def __init__(
        self,
        depth: int,
        hidden_size: int,
        num_heads: int,
        input_dim: int | None = None,
        output_dim: int | None = None,
        context_dim: int | None = None,
        mlp_ratio: float = 4.0,
        add_space_attn: bool = True,
        qk_norm: QkNorm = False,
        gradient_checkpointing: bool = False,
        qkv_bias: bool = True,
        fused_attn: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if depth <= 0:
            raise ValueError(f"depth must be a positive number of layers, got {depth}.")
        factory = {"device": device, "dtype": dtype}
        self.depth = depth
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.input_dim = input_dim or hidden_size
        self.output_dim = output_dim or hidden_size
        self.context_dim = context_dim or hidden_size
        self.gradient_checkpointing = gradient_checkpointing

        self.input_proj = _projection(self.input_dim, hidden_size, factory)
        self.layers = nn.ModuleList(
            DiTUpdateLayer(
                hidden_size,
                num_heads,
                self.context_dim,
                mlp_ratio,
                add_space_attn,
                qk_norm,
                qkv_bias,
                fused_attn,
                factory,
            )
            for _ in range(depth)
        )
        self.output_proj = _projection(hidden_size, self.output_dim, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as DiT: xavier-uniform Linears with zero bias, then zero every adaLN Linear.

        Zeroed modulation makes every gate zero, so with equal widths the whole model is the
        identity at initialisation and each block learns how much to contribute.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if hasattr(module, "adaLN_modulation"):
                nn.init.zeros_(module.adaLN_modulation[-1].weight)
                nn.init.zeros_(module.adaLN_modulation[-1].bias)

    def forward(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        c: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Update the tokens given the context and the conditioning.

        Args:
            tokens: ``(B, N, T, input_dim)``.
            context: ``(B, M, context_dim)`` scene and text tokens.
            c: ``(B, hidden_size)`` or ``(B, T, hidden_size)`` conditioning, typically the
                diffusion-timestep embedding.
            context_mask: ``(B, M)`` bool key-padding mask, True means attend.
            causal: Make temporal attention causal, so step ``t`` attends only to steps ``<= t``.

        Returns:
            ``(B, N, T, output_dim)``.

        Raises:
            ValueError: If a shape does not match the contract above.
            TypeError: If an input has the wrong type or dtype.
        """
        c = self._check_inputs(tokens, context, c, context_mask)

        x = self.input_proj(tokens)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, context, c, context_mask, causal, use_reentrant=False)
            else:
                x = layer(x, context, c, context_mask, causal)
        return self.output_proj(x)

    def _check_inputs(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        c: torch.Tensor,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Validate the inputs and return ``c`` shaped ``(B, 1, T or 1, hidden_size)``."""
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 3:
            raise ValueError(
                f"tokens must have shape (B, N, T, C), got {tuple(tokens.shape)}. Flattened "
                "(B, N * T, C) tokens must be reshaped with tokens.view(B, N, T, C)."
            )
        check_tensor(tokens, "tokens", ndim=4, last_dim=self.input_dim, layout="(B, N, T, C_in)")
        batch, _, steps, _ = tokens.shape

        check_tensor(context, "context", ndim=3, last_dim=self.context_dim, layout="(B, M, C_ctx)")
        if context.shape[0] != batch:
            raise ValueError(
                f"context has batch size {context.shape[0]} but tokens have {batch}. "
                "Give every sample its own context."
            )
        if context_mask is not None:
            check_bool_mask(context_mask, "context_mask", [(batch, context.shape[1])], "(B, M)")

        check_tensor(c, "c", ndim=(2, 3), last_dim=self.hidden_size, layout="(B, C) or (B, T, C)")
        if c.shape[0] not in (1, batch):
            raise ValueError(
                f"c has batch size {c.shape[0]} but tokens have {batch}. Pass one "
                "conditioning per sample: (B, C) or (B, T, C)."
            )
        if c.dim() == 3 and c.shape[1] not in (1, steps):
            raise ValueError(
                f"Per-step conditioning c must have T={steps} steps like the tokens, got "
                f"shape {tuple(c.shape)}. Pass (B, C) to share one vector across the steps."
            )
        return c.unsqueeze(1) if c.dim() == 3 else c[:, None, None, :]

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, hidden_size={self.hidden_size}, num_heads={self.num_heads}, "
            f"input_dim={self.input_dim}, output_dim={self.output_dim}, "
            f"context_dim={self.context_dim}, gradient_checkpointing={self.gradient_checkpointing}"
        )


def _projection(in_features: int, out_features: int, factory: dict) -> nn.Module:
    if in_features == out_features:
        return nn.Identity()
    return nn.Linear(in_features, out_features, **factory)
