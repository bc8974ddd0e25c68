"""adaLN-Zero transformer blocks: self-attention and cross-attention, conditioned on ``c``.

Each block follows DiT's adaLN-Zero design. A SiLU and a Linear map the conditioning vector
to six vectors: shift, scale and gate for the attention branch and for the MLP branch. The
LayerNorms have no affine parameters because the shift and scale take their place. The
modulation Linear starts at zero, so every gate is zero and every block is exactly the
identity at initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from ditblocks._checks import check_bool_mask, check_tensor
from ditblocks.attention import Attention, Mlp, QkNorm

__all__ = ["DiTAttnBlock", "DiTCrossAttnBlock", "modulate"]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Apply adaptive layer-norm modulation: ``x * (1 + scale) + shift``.

    Unlike DiT's version, which inserts a sequence axis, ``shift`` and ``scale`` must already
    broadcast against ``x``. A ``(B, 1, C)`` modulation then serves all L rows of a
    ``(B, L, C)`` input without being repeated.

    Args:
        x: Normalised activations, ``(..., C)``.
        shift: Additive modulation, broadcastable to ``x``.
        scale: Multiplicative modulation around 1, broadcastable to ``x``.

    Returns:
        Tensor with the broadcast shape of the inputs.

    Examples:
        >>> import torch
        >>> from ditblocks import modulate
        >>> x = torch.ones(2, 3, 4)
        >>> modulate(x, shift=torch.zeros(2, 1, 4), scale=torch.full((2, 1, 4), 0.5))[0, 0]
        tensor([1.5000, 1.5000, 1.5000, 1.5000])
    """
    return torch.addcmul(shift, x, 1 + scale)


class _AdaLNZeroBlock(nn.Module):
    """Shared parts of the adaLN-Zero blocks: norms, MLP, modulation and initialisation."""

    def __init__(self, hidden_size: int, mlp_ratio: float, factory: dict) -> None:
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}.")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}.")
        self.hidden_size = hidden_size
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), **factory)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, **factory)
        )

    def reset_parameters(self) -> None:
        """Initialise as DiT: xavier-uniform Linears with zero bias, then zero the modulation.

        The zeroed modulation Linear makes every shift, scale and gate start at zero, so the
        block starts as the identity and learns how much of each branch to let through.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def _modulation(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the six modulation tensors, each broadcastable against ``x``.

        The modulation Linear runs on ``c`` as given, once per distinct conditioning vector.
        """
        c = _conditioning_for(x, c, self.hidden_size)
        return self.adaLN_modulation(c).chunk(6, dim=-1)

    def _mlp_branch(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        hidden = modulate(self.norm2(x), shift, scale)
        return torch.addcmul(x, gate, self.mlp(hidden))


class DiTAttnBlock(_AdaLNZeroBlock):
    """adaLN-Zero self-attention block: attention over the second-to-last axis, then an MLP.

    ``x`` may carry extra leading axes: a ``(B, T, N, C)`` input attends across ``N`` for each
    ``(b, t)``, which is how DiTUpdateFormer runs spatial and temporal attention.

    Args:
        hidden_size: Width of the tokens and of the conditioning.
        num_heads: Number of attention heads.
        mlp_ratio: Hidden width of the MLP relative to ``hidden_size``.
        qkv_bias: Whether the qkv projection has a bias.
        qk_norm: Per-head query/key normalisation, see [`Attention`][ditblocks.Attention].
        fused_attn: Use scaled_dot_product_attention (True) or the reference path (False).
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Shape:
        - x: ``(*batch, L, C)``
        - c: ``(B, C)``, one conditioning vector per sample (``B = x.shape[0]``), or a tensor
          with as many axes as ``x`` whose sizes are 1 or equal to those of ``x`` (per-token
          conditioning, broadcast rather than repeated).
        - key_padding_mask: ``(*batch, L)`` bool, True means attend.
        - attn_mask: ``(L, L)`` or ``(*batch, L, L)`` bool, True means attend.
        - output: same shape as ``x``.

    Examples:
        >>> import torch
        >>> from ditblocks import DiTAttnBlock
        >>> block = DiTAttnBlock(hidden_size=64, num_heads=4)
        >>> x, c = torch.randn(2, 10, 64), torch.randn(2, 64)
        >>> torch.equal(block(x, c), x)  # adaLN-Zero: the identity at initialisation
        True
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: QkNorm = False,
        fused_attn: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(hidden_size, mlp_ratio, factory)
        self.attn = Attention(
            hidden_size,
            num_heads,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            fused_attn=fused_attn,
            **factory,
        )
        self.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Run attention and MLP, each gated by the conditioning ``c``.

        Args:
            x: Tokens ``(*batch, L, C)``; attention runs across ``L``.
            c: Conditioning, ``(B, C)`` or per-token (see the class docstring).
            key_padding_mask: ``(*batch, L)`` bool, True means attend.
            attn_mask: ``(L, L)`` or ``(*batch, L, L)`` bool, True means attend.
            is_causal: Let position ``i`` attend only positions ``j <= i``.

        Returns:
            Tensor of the same shape as ``x``.
        """
        check_tensor(x, "x", last_dim=self.hidden_size, layout="(*batch, L, C)")
        if x.dim() < 3:
            raise ValueError(
                f"x must have shape (*batch, L, C) with at least one batch axis, got "
                f"{tuple(x.shape)}. Add a batch axis with x.unsqueeze(0)."
            )
        key_padding_mask, attn_mask = self._flatten_masks(x, key_padding_mask, attn_mask)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._modulation(x, c)

        hidden = modulate(self.norm1(x), shift_msa, scale_msa)
        length, channels = x.shape[-2:]
        attended = self.attn(
            hidden.reshape(-1, length, channels),
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            is_causal=is_causal,
        ).view(x.shape)
        x = torch.addcmul(x, gate_msa, attended)

        return self._mlp_branch(x, shift_mlp, scale_mlp, gate_mlp)

    @staticmethod
    def _flatten_masks(
        x: torch.Tensor, key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        batch_shape, length = tuple(x.shape[:-2]), x.shape[-2]
        if key_padding_mask is not None:
            check_bool_mask(
                key_padding_mask, "key_padding_mask", [(*batch_shape, length)], "(*batch, L)"
            )
            key_padding_mask = key_padding_mask.reshape(-1, length)
        if attn_mask is not None:
            check_bool_mask(
                attn_mask,
                "attn_mask",
                [(length, length), (*batch_shape, length, length)],
                "(L, L) or (*batch, L, L)",
            )
            if attn_mask.dim() > 2:
                attn_mask = attn_mask.reshape(-1, length, length)
        return key_padding_mask, attn_mask


class DiTCrossAttnBlock(_AdaLNZeroBlock):
    """adaLN-Zero cross-attention block: every token attends to a context, then an MLP.

    The context is normalised by its own LayerNorm over ``context_dim`` (with affine
    parameters, since the context is not modulated), so the context may be wider or narrower
    than the tokens.

    Args:
        hidden_size: Width of the tokens and of the conditioning.
        context_dim: Width of the context tokens.
        num_heads: Number of attention heads.
        mlp_ratio: Hidden width of the MLP relative to ``hidden_size``.
        qkv_bias: Whether the query, key and value projections have a bias.
        qk_norm: Per-head query/key normalisation, see [`Attention`][ditblocks.Attention].
        fused_attn: Use scaled_dot_product_attention (True) or the reference path (False).
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Shape:
        - x: ``(B, *, C)``; all axes between the first and the last form the query sequence.
        - context: ``(B, M, context_dim)``
        - c: ``(B, C)`` or a tensor with as many axes as ``x`` whose sizes are 1 or equal to
          those of ``x``.
        - context_mask: ``(B, M)`` bool key-padding mask, True where a context token may be
          attended.
        - output: same shape as ``x``.

    Examples:
        >>> import torch
        >>> from ditblocks import DiTCrossAttnBlock
        >>> block = DiTCrossAttnBlock(hidden_size=64, context_dim=32, num_heads=4)
        >>> x, context, c = torch.randn(2, 8, 5, 64), torch.randn(2, 12, 32), torch.randn(2, 64)
        >>> block(x, context, c, context_mask=torch.ones(2, 12, dtype=torch.bool)).shape
        torch.Size([2, 8, 5, 64])
    """

    def __init__(
        self,
        hidden_size: int,
        context_dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: QkNorm = False,
        fused_attn: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(hidden_size, mlp_ratio, factory)
        self.context_dim = context_dim
        self.context_norm = nn.LayerNorm(context_dim, eps=1e-6, **factory)
        self.attn = Attention(
            hidden_size,
            num_heads,
            context_dim=context_dim,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            fused_attn=fused_attn,
            **factory,
        )
        self.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        c: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from every token of ``x`` to ``context``, then run the MLP.

        Args:
            x: Tokens ``(B, *, C)``.
            context: ``(B, M, context_dim)``.
            c: Conditioning, ``(B, C)`` or per-token (see the class docstring).
            context_mask: ``(B, M)`` bool, True where a context token may be attended.

        Returns:
            Tensor of the same shape as ``x``.
        """
        check_tensor(x, "x", last_dim=self.hidden_size, layout="(B, *, C)")
        if x.dim() < 3:
            raise ValueError(
                f"x must have shape (B, *, C) with at least one sequence axis, got "
                f"{tuple(x.shape)}. Add a sequence axis with x.unsqueeze(1)."
            )
        check_tensor(context, "context", ndim=3, last_dim=self.context_dim, layout="(B, M, C_ctx)")
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._modulation(x, c)

        hidden = modulate(self.norm1(x), shift_msa, scale_msa)
        queries = hidden.reshape(x.shape[0], -1, self.hidden_size)
        attended = self.attn(
            queries, self.context_norm(context), key_padding_mask=context_mask
        ).view(x.shape)
        x = torch.addcmul(x, gate_msa, attended)

        return self._mlp_branch(x, shift_mlp, scale_mlp, gate_mlp)


def _conditioning_for(x: torch.Tensor, c: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Check ``c`` and reshape a per-sample ``(B, C)`` to broadcast against ``x``."""
    check_tensor(c, "c", last_dim=hidden_size, layout="(B, C) or per-token")
    if c.dim() == 2:
        if c.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"c has batch size {c.shape[0]} but x has {x.shape[0]}. Pass one "
                "conditioning vector per sample, shape (B, C)."
            )
        return c.view(c.shape[0], *([1] * (x.dim() - 2)), hidden_size)

    compatible = c.dim() == x.dim() and all(
        size_c in (1, size_x) for size_c, size_x in zip(c.shape[:-1], x.shape[:-1], strict=True)
    )
    if not compatible:
        raise ValueError(
            f"c must have shape (B, C) or one that broadcasts against x {tuple(x.shape)} with "
            f"the same number of axes (each size 1 or equal to x's), got {tuple(c.shape)}. "
            "Insert size-1 axes where the conditioning is shared."
        )
    return c
