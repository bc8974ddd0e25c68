"""Tests of modulate and the adaLN-Zero blocks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ditblocks import DiTAttnBlock, DiTCrossAttnBlock, modulate
from tests.helpers import perturb_modulation


def test_modulate_matches_formula():
    x, shift, scale = torch.randn(2, 5, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale) + shift)


@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 8),
    heads=st.sampled_from([1, 2, 4]),
    per_token=st.booleans(),
    seed=st.integers(0, 1000),
)
@settings(max_examples=20, deadline=None)
def test_attn_block_is_identity_at_init(batch, length, heads, per_token, seed):
    torch.manual_seed(seed)
    block = DiTAttnBlock(8 * heads, heads)
    x = torch.randn(batch, length, 8 * heads)
    c = torch.randn(batch, length, 8 * heads) if per_token else torch.randn(batch, 8 * heads)

    assert torch.equal(block(x, c, is_causal=True), x)


@given(
    batch=st.integers(1, 3),
    points=st.integers(1, 5),
    steps=st.integers(1, 5),
    context_len=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
@settings(max_examples=20, deadline=None)
def test_cross_block_is_identity_at_init(batch, points, steps, context_len, seed):
    torch.manual_seed(seed)
    block = DiTCrossAttnBlock(16, context_dim=24, num_heads=2)
    x = torch.randn(batch, points, steps, 16)
    context = torch.randn(batch, context_len, 24)

    assert torch.equal(block(x, context, torch.randn(batch, 16)), x)


def test_blocks_follow_dit_adaln_zero_layout():
    block = DiTCrossAttnBlock(16, context_dim=40, num_heads=2)
    modulation = block.adaLN_modulation

    assert isinstance(modulation[0], torch.nn.SiLU)
    assert modulation[1].out_features == 6 * 16
    assert torch.count_nonzero(modulation[1].weight) == 0
    assert torch.count_nonzero(modulation[1].bias) == 0
    assert block.norm1.elementwise_affine is False
    assert block.norm1.eps == 1e-6
    assert block.context_norm.normalized_shape == (40,)
    assert isinstance(block.mlp.act, torch.nn.GELU)
    assert block.mlp.act.approximate == "tanh"


def test_attn_block_broadcast_conditioning_equals_repeated():
    torch.manual_seed(0)
    block = perturb_modulation(DiTAttnBlock(16, 2))
    x = torch.randn(2, 6, 16)
    c = torch.randn(2, 16)

    per_sample = block(x, c)
    repeated = block(x, c[:, None, :].repeat(1, 6, 1))
    size_one_axis = block(x, c[:, None, :])

    torch.testing.assert_close(per_sample, repeated)
    torch.testing.assert_close(per_sample, size_one_axis)


def test_block_modulation_runs_once_per_conditioning_vector():
    block = DiTCrossAttnBlock(16, context_dim=8, num_heads=2)
    rows = []
    block.adaLN_modulation[1].register_forward_hook(
        lambda module, args, output: rows.append(args[0].numel() // 16)
    )
    x = torch.randn(3, 10, 7, 16)  # 70 token rows per sample

    block(x, torch.randn(3, 4, 8), torch.randn(3, 16))
    block(x, torch.randn(3, 4, 8), torch.randn(3, 1, 7, 16))

    assert rows == [3, 3 * 7]


def test_attn_block_attends_along_second_to_last_axis():
    torch.manual_seed(0)
    block = perturb_modulation(DiTAttnBlock(16, 2))
    x = torch.randn(2, 3, 5, 16)  # attention across the 5 positions of each (b, row)
    c = torch.randn(2, 16)

    full = block(x, c)
    one_row = block(x[:, 1], c)

    torch.testing.assert_close(full[:, 1], one_row)


def test_attn_block_key_padding_with_extra_axes():
    torch.manual_seed(0)
    block = perturb_modulation(DiTAttnBlock(16, 2))
    x = torch.randn(2, 3, 5, 16)
    c = torch.randn(2, 16)
    padding = torch.ones(2, 3, 5, dtype=torch.bool)
    padding[:, :, 4] = False
    changed = x.clone()
    changed[:, :, 4] = 50.0

    masked = block(x, c, key_padding_mask=padding)
    masked_changed = block(changed, c, key_padding_mask=padding)
    unmasked_changed = block(changed, c)

    # Position 4 is never attended, so the other positions ignore its value.
    torch.testing.assert_close(masked[:, :, :4], masked_changed[:, :, :4])
    assert not torch.allclose(masked[:, :, :4], unmasked_changed[:, :, :4])


def test_cross_block_ignores_padded_context_tokens():
    torch.manual_seed(0)
    block = perturb_modulation(DiTCrossAttnBlock(16, context_dim=12, num_heads=2))
    x = torch.randn(2, 4, 3, 16)
    c = torch.randn(2, 16)
    context = torch.randn(2, 5, 12)
    padded = torch.cat([context, torch.randn(2, 3, 12) * 10], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3] * 2)

    torch.testing.assert_close(block(x, context, c), block(x, padded, c, context_mask=mask))


@pytest.mark.parametrize(
    ("c", "match"),
    [
        (torch.randn(2, 12), r"c must have 16 channels.*got 12"),
        (torch.randn(3, 16), "c has batch size 3 but x has 2"),
        (torch.randn(2, 4, 16), r"c must have shape \(B, C\) or one that broadcasts"),
        (torch.randn(2, 5, 16, dtype=torch.float64).long(), "floating-point"),
    ],
)
def test_attn_block_rejects_bad_conditioning(c, match):
    block = DiTAttnBlock(16, 2)
    with pytest.raises((ValueError, TypeError), match=match):
        block(torch.randn(2, 5, 16), c)


def test_cross_block_rejects_context_of_wrong_width():
    block = DiTCrossAttnBlock(16, context_dim=384, num_heads=2)
    with pytest.raises(ValueError, match=r"context must have 384 channels.*got 512"):
        block(torch.randn(2, 5, 16), torch.randn(2, 7, 512), torch.randn(2, 16))


def test_cross_block_rejects_float_context_mask():
    block = DiTCrossAttnBlock(16, context_dim=8, num_heads=2)
    with pytest.raises(TypeError, match="key_padding_mask must be a bool tensor"):
        block(torch.randn(2, 5, 16), torch.randn(2, 7, 8), torch.randn(2, 16), torch.ones(2, 7))


def test_attn_block_rejects_mask_of_wrong_shape():
    block = DiTAttnBlock(16, 2)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(\*batch, L\)"):
        block(torch.randn(2, 5, 16), torch.randn(2, 16), key_padding_mask=torch.ones(3, 5).bool())
