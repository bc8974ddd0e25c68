"""Multi-head self- and cross-attention with boolean masks, and the transformer MLP."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ditblocks._checks import check_bool_mask, check_tensor

__all__ = ["Attention", "Mlp"]

QkNorm = Literal["rms", "layer"] | bool | None


class Attention(nn.Module):
    """Multi-head attention for self-attention and cross-attention.

    Built without ``context_dim`` it is self-attention with one fused qkv projection. Built with
    ``context_dim`` it is cross-attention: queries come from ``x`` and keys and values from a
    ``context`` whose width may differ from ``dim``.

    Masks are boolean and True means attend. A key-padding mask ``(B, S)`` and an attention
    mask ``(L, S)`` or ``(B, L, S)`` may be given together. They are combined into one boolean
    mask that broadcasts over the heads and is never expanded to ``(B, heads, L, S)``. A query
    whose keys are all masked gets zeros from attention, never NaN, and passes no gradient.

    Two paths share these semantics: ``torch.nn.functional.scaled_dot_product_attention``
    (``fused_attn=True``, the default) and a plain-matmul reference path with an explicit
    softmax (``fused_attn=False``) for checking and debugging.

    Args:
        dim: Width of the queries and of the output.
        num_heads: Number of attention heads; must divide ``dim``.
        context_dim: Width of the context for cross-attention, or None for self-attention.
        qkv_bias: Whether the query, key and value projections have a bias.
        qk_norm: Per-head normalisation of queries and keys: ``"rms"`` (RMSNorm), ``"layer"``
            (LayerNorm), ``True`` (same as ``"layer"``) or ``False``/``None`` (none).
        attn_drop: Dropout probability on the attention weights, applied in training only.
        proj_drop: Dropout probability after the output projection.
        fused_attn: Use scaled_dot_product_attention (True) or the reference path (False).
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Shape:
        - x: ``(B, L, dim)``
        - context: ``(B, S, context_dim)`` for cross-attention, None for self-attention
        - key_padding_mask: ``(B, S)`` bool
        - attn_mask: ``(L, S)`` or ``(B, L, S)`` bool
        - output: ``(B, L, dim)``

    Examples:
        >>> import torch
        >>> from ditblocks import Attention
        >>> attn = Attention(dim=64, num_heads=4, context_dim=32)
        >>> x, context = torch.randn(2, 10, 64), torch.randn(2, 7, 32)
        >>> padding = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
        >>> attn(x, context, key_padding_mask=padding).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        qk_norm: QkNorm = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(
                f"dim must be a positive multiple of num_heads, got dim={dim} and "
                f"num_heads={num_heads}. Pick a num_heads that divides dim."
            )
        if context_dim is not None and context_dim <= 0:
            raise ValueError(f"context_dim must be positive or None, got {context_dim}.")

        factory = {"device": device, "dtype": dtype}
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.context_dim = context_dim
        self.fused_attn = fused_attn
        self.attn_drop = attn_drop

        if context_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **factory)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias, **factory)
            self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias, **factory)
        self.q_norm = _make_head_norm(qk_norm, self.head_dim, factory)
        self.k_norm = _make_head_norm(qk_norm, self.head_dim, factory)
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def is_cross_attention(self) -> bool:
        """True when the module attends to a separate context."""
        return self.context_dim is not None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attend from ``x`` to itself or to ``context``.

        Args:
            x: Queries, ``(B, L, dim)``.
            context: Keys and values for cross-attention, ``(B, S, context_dim)``. Must be
                None for self-attention, where ``S == L``.
            key_padding_mask: ``(B, S)`` bool, True where a key may be attended.
            attn_mask: ``(L, S)`` or ``(B, L, S)`` bool, True where query ``l`` may attend key
                ``s``.
            is_causal: Let query ``i`` attend only keys ``j <= i``.

        Returns:
            ``(B, L, dim)``.

        Raises:
            ValueError: If a shape does not match the contract above.
            TypeError: If a mask is not boolean or an input is not a tensor.
        """
        batch, length, keys = self._check_inputs(x, context, key_padding_mask, attn_mask)
        q, k, v = self._project(x, context)

        mask, row_has_key = _combine_masks(
            key_padding_mask, attn_mask, is_causal, length, keys, x.device
        )
        if self.fused_attn:
            dropout_p = self.attn_drop if self.training else 0.0
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal and mask is None
            )
        else:
            out = self._reference_attention(q, k, v, mask, is_causal and mask is None)

        # Rows without any attendable key were unmasked to keep the softmax finite; their
        # output is replaced by zeros so they carry neither values nor gradients.
        if row_has_key is not None:
            out = out.masked_fill(~row_has_key, 0.0)

        out = out.transpose(1, 2).reshape(batch, length, self.dim)
        return self.proj_drop(self.proj(out))

    def _project(
        self, x: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        if context is None:
            qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        else:
            keys = context.shape[1]
            q = self.q(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            kv = self.kv(context).view(batch, keys, 2, self.num_heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, S, head_dim)
        return self.q_norm(q), self.k_norm(k), v

    def _reference_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, heads, L, S)
        if is_causal:
            mask = _causal_mask(q.shape[-2], k.shape[-2], q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))

        weights = scores.float().softmax(dim=-1).to(q.dtype)
        if self.training and self.attn_drop > 0:
            weights = F.dropout(weights, p=self.attn_drop)
        return weights @ v

    def _check_inputs(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
    ) -> tuple[int, int, int]:
        check_tensor(x, "x", ndim=3, last_dim=self.dim, layout="(B, L, dim)")
        batch, length, _ = x.shape

        if self.is_cross_attention:
            if context is None:
                raise ValueError(
                    "context is required: this Attention was built for cross-attention "
                    f"(context_dim={self.context_dim}). Pass context of shape (B, S, "
                    f"{self.context_dim}), or build Attention without context_dim."
                )
            check_tensor(
                context, "context", ndim=3, last_dim=self.context_dim, layout="(B, S, C_ctx)"
            )
            if context.shape[0] != batch:
                raise ValueError(
                    f"context has batch size {context.shape[0]} but x has {batch}. "
                    "Give every sample its own context."
                )
            keys = context.shape[1]
        else:
            if context is not None:
                raise ValueError(
                    "context was given to a self-attention Attention (context_dim=None). "
                    "Build it with context_dim=... for cross-attention, or drop context."
                )
            keys = length

        if key_padding_mask is not None:
            check_bool_mask(key_padding_mask, "key_padding_mask", [(batch, keys)], "(B, S)")
        if attn_mask is not None:
            check_bool_mask(
                attn_mask,
                "attn_mask",
                [(length, keys), (batch, length, keys)],
                "(L, S) or (B, L, S)",
            )
        return batch, length, keys


class Mlp(nn.Module):
    """Transformer feed-forward network: Linear, GELU (tanh approximation, as DiT), Linear.

    Args:
        in_features: Input width.
        hidden_features: Hidden width; defaults to ``in_features``.
        out_features: Output width; defaults to ``in_features``.
        drop: Dropout probability after each Linear.
        bias: Whether the Linear layers have biases.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Examples:
        >>> import torch
        >>> from ditblocks import Mlp
        >>> Mlp(32, hidden_features=128)(torch.randn(4, 32)).shape
        torch.Size([4, 32])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        drop: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **factory)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **factory)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the last dimension of ``x``."""
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


def _make_head_norm(kind: QkNorm, head_dim: int, factory: dict) -> nn.Module:
    if kind is None or kind is False:
        return nn.Identity()
    if kind is True or kind == "layer":
        return nn.LayerNorm(head_dim, eps=1e-6, **factory)
    if kind == "rms":
        return nn.RMSNorm(head_dim, eps=1e-6, **factory)
    raise ValueError(f"qk_norm must be 'rms', 'layer', True, False or None, got {kind!r}.")


def _causal_mask(length: int, keys: int, device: torch.device) -> torch.Tensor:
    return torch.ones(length, keys, dtype=torch.bool, device=device).tril()


def _combine_masks(
    key_padding_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    length: int,
    keys: int,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Merge the masks into one bool mask that broadcasts to ``(B, heads, L, S)``.

    Returns the merged mask (None when nothing is masked) and a ``(B or 1, 1, L or 1, 1)`` bool
    tensor that is False for query rows with no attendable key. Those rows are unmasked in the
    returned mask, so the softmax stays finite, and the caller zeroes their output.
    """
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
    if attn_mask is not None:
        expanded = attn_mask[None, None] if attn_mask.dim() == 2 else attn_mask[:, None]
        mask = expanded if mask is None else mask & expanded
    if mask is None:
        # Causal attention alone needs no merged mask because the kernel applies it, and every
        # query attends at least to its own key.
        return None, None
    if is_causal:
        mask = mask & _causal_mask(length, keys, device)

    row_has_key = mask.any(dim=-1, keepdim=True)
    return mask | ~row_has_key, row_has_key
