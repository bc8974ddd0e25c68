"""Tests of Attention (fused and reference paths, boolean masks) and Mlp."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from ditblocks import Attention, Mlp


def random_masks(batch, length, keys, generator):
    padding = torch.rand(batch, keys, generator=generator) > 0.3
    attn_mask = torch.rand(batch, length, keys, generator=generator) > 0.3
    return padding, attn_mask


def reference_copy(attn: Attention, qk_norm=False) -> Attention:
    """A reference-path twin of ``attn`` with the same weights."""
    twin = Attention(
        attn.dim, attn.num_heads, context_dim=attn.context_dim, qk_norm=qk_norm, fused_attn=False
    )
    twin.load_state_dict(attn.state_dict())
    return twin


@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 9),
    keys=st.integers(1, 9),
    heads=st.sampled_from([1, 2, 4]),
    cross=st.booleans(),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_attention_fused_matches_reference(batch, length, keys, heads, cross, causal, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    keys = keys if cross else length
    attn = Attention(8 * heads, heads, context_dim=12 if cross else None)
    reference = reference_copy(attn)

    x = torch.randn(batch, length, 8 * heads, generator=generator)
    context = torch.randn(batch, keys, 12, generator=generator) if cross else None
    padding, attn_mask = random_masks(batch, length, keys, generator)

    fused = attn(x, context, key_padding_mask=padding, attn_mask=attn_mask, is_causal=causal)
    plain = reference(x, context, key_padding_mask=padding, attn_mask=attn_mask, is_causal=causal)

    assert fused.isfinite().all()
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_attention_causal_only_matches_explicit_mask(fused):
    torch.manual_seed(0)
    attn = Attention(16, 2, fused_attn=fused)
    x = torch.randn(2, 6, 16)
    explicit = torch.ones(6, 6, dtype=torch.bool).tril()

    torch.testing.assert_close(attn(x, is_causal=True), attn(x, attn_mask=explicit))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_all_masked_rows_are_zero_and_finite(fused, dtype):
    torch.manual_seed(0)
    attn = Attention(16, 2, context_dim=8, fused_attn=fused).to(dtype)
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    context = torch.randn(3, 4, 8, dtype=dtype)
    padding = torch.ones(3, 4, dtype=torch.bool)
    padding[1] = False  # sample 1 has no attendable key at all
    attn_mask = torch.ones(5, 4, dtype=torch.bool)
    attn_mask[2] = False  # query row 2 of every sample has no attendable key

    out = attn(x, context, key_padding_mask=padding, attn_mask=attn_mask)
    out.float().sum().backward()

    assert out.isfinite().all()
    assert x.grad.isfinite().all()
    # With no key, the attention output is zero, so only the projection bias remains.
    bias = attn.proj.bias.detach()
    torch.testing.assert_close(out[1].detach(), bias.expand(5, 16))
    torch.testing.assert_close(out[:, 2].detach(), bias.expand(3, 16))


def test_attention_all_masked_row_passes_no_gradient():
    torch.manual_seed(0)
    attn = Attention(8, 1, context_dim=8)
    x = torch.randn(1, 2, 8, requires_grad=True)
    context = torch.randn(1, 3, 8)
    attn_mask = torch.tensor([[True, True, True], [False, False, False]])

    attn(x, context, attn_mask=attn_mask)[0, 1].sum().backward()

    assert torch.equal(x.grad, torch.zeros_like(x.grad))


def test_attention_padding_keys_do_not_change_output():
    torch.manual_seed(0)
    attn = Attention(16, 4, context_dim=6)
    x = torch.randn(2, 5, 16)
    context = torch.randn(2, 3, 6)
    extra = torch.randn(2, 4, 6) * 100.0
    padded = torch.cat([context, extra], dim=1)
    padding = torch.tensor([[True] * 3 + [False] * 4] * 2)

    torch.testing.assert_close(attn(x, context), attn(x, padded, key_padding_mask=padding))


@pytest.mark.parametrize("qk_norm", ["rms", "layer", True])
def test_attention_qk_norm_normalises_each_head(qk_norm):
    attn = Attention(16, 4, qk_norm=qk_norm)
    expected = torch.nn.RMSNorm if qk_norm == "rms" else torch.nn.LayerNorm
    assert isinstance(attn.q_norm, expected)
    assert attn.q_norm.normalized_shape == (4,)
    reference = reference_copy(attn, qk_norm=qk_norm)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(attn(x), reference(x))


def test_attention_qkv_bias_is_on_by_default():
    assert Attention(8, 2).qkv.bias is not None
    assert Attention(8, 2, qkv_bias=False).qkv.bias is None


class ShapeRecorder(TorchDispatchMode):
    """Record the shape and dtype of every tensor produced by an ATen operator."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        results = result if isinstance(result, tuple | list) else (result,)
        for value in results:
            if isinstance(value, torch.Tensor):
                self.outputs.append((func, tuple(value.shape), value.dtype))
        return result


def test_attention_never_builds_per_head_float_mask():
    batch, heads, length, keys = 2, 4, 7, 11
    attn = Attention(8 * heads, heads, context_dim=8)
    x = torch.randn(batch, length, 8 * heads)
    context = torch.randn(batch, keys, 8)
    padding = torch.rand(batch, keys) > 0.2
    attn_mask = torch.rand(length, keys) > 0.2

    with ShapeRecorder() as recorder:
        attn(x, context, key_padding_mask=padding, attn_mask=attn_mask)

    per_head = [
        (str(func), dtype)
        for func, shape, dtype in recorder.outputs
        if shape == (batch, heads, length, keys) and dtype.is_floating_point
    ]
    assert per_head == []
    assert any(shape == (batch, 1, length, keys) for _, shape, _ in recorder.outputs)


def test_mlp_uses_tanh_gelu():
    mlp = Mlp(8, hidden_features=32)
    x = torch.randn(5, 8)
    expected = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x), approximate="tanh"))
    torch.testing.assert_close(mlp(x), expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": torch.randn(2, 5, 12)}, ValueError, "x must have 16 channels"),
        ({"x": torch.randn(5, 16)}, ValueError, r"x must have shape \(B, L, dim\)"),
        ({"context": torch.randn(2, 3, 6)}, ValueError, "context was given to a self-attention"),
        ({"key_padding_mask": torch.ones(3, 5).bool()}, ValueError, r"got \(3, 5\)"),
        ({"key_padding_mask": torch.ones(2, 5)}, TypeError, "must be a bool tensor"),
        ({"attn_mask": torch.ones(5, 4).bool()}, ValueError, r"\(L, S\) or \(B, L, S\)"),
        ({"x": torch.ones(2, 5, 16, dtype=torch.int64)}, TypeError, "floating-point"),
    ],
)
def test_attention_self_rejects_bad_input(kwargs, error, match):
    attn = Attention(16, 4)
    inputs = {"x": torch.randn(2, 5, 16), **kwargs}
    with pytest.raises(error, match=match):
        attn(**inputs)


def test_attention_cross_rejects_wrong_context_width():
    attn = Attention(16, 4, context_dim=384)
    with pytest.raises(ValueError, match=r"context must have 384 channels.*got 512"):
        attn(torch.randn(2, 5, 16), torch.randn(2, 7, 512))


def test_attention_cross_requires_context():
    with pytest.raises(ValueError, match="context is required"):
        Attention(16, 4, context_dim=8)(torch.randn(2, 5, 16))


def test_attention_rejects_heads_that_do_not_divide_dim():
    with pytest.raises(ValueError, match="dim must be a positive multiple of num_heads"):
        Attention(10, 4)
