"""Tests of DiTUpdateFormer: identity at init, invariants, conditioning, masks and errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ditblocks import DiTUpdateFormer
from tests.helpers import perturb_modulation

HIDDEN, HEADS, CONTEXT_DIM = 32, 4, 24


def make_model(**kwargs) -> DiTUpdateFormer:
    options = {"depth": 2, "hidden_size": HIDDEN, "num_heads": HEADS, "context_dim": CONTEXT_DIM}
    return DiTUpdateFormer(**{**options, **kwargs})


def make_inputs(batch=2, points=5, steps=4, context_len=6, channels=HIDDEN, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, points, steps, channels, generator=generator)
    context = torch.randn(batch, context_len, CONTEXT_DIM, generator=generator)
    c = torch.randn(batch, HIDDEN, generator=generator)
    mask = torch.ones(batch, context_len, dtype=torch.bool)
    return tokens, context, c, mask


def trained_model(**kwargs) -> DiTUpdateFormer:
    torch.manual_seed(0)
    return perturb_modulation(make_model(**kwargs)).eval()


@given(
    batch=st.integers(1, 3),
    points=st.integers(1, 6),
    steps=st.integers(1, 6),
    context_len=st.integers(1, 7),
    per_step=st.booleans(),
    causal=st.booleans(),
    seed=st.integers(0, 1000),
)
@settings(max_examples=25, deadline=None)
def test_updateformer_is_identity_at_init(
    batch, points, steps, context_len, per_step, causal, seed
):
    torch.manual_seed(seed)
    model = make_model()
    tokens, context, c, mask = make_inputs(batch, points, steps, context_len, seed=seed)
    mask[:, -1] = False
    if per_step:
        c = torch.randn(batch, steps, HIDDEN)

    assert torch.equal(model(tokens, context, c, context_mask=mask, causal=causal), tokens)


@given(seed=st.integers(0, 1000), causal=st.booleans())
@settings(max_examples=10, deadline=None)
def test_updateformer_is_equivariant_to_point_permutation(seed, causal):
    model = trained_model()
    tokens, context, c, mask = make_inputs(points=7, seed=seed)
    permutation = torch.randperm(7, generator=torch.Generator().manual_seed(seed))

    out = model(tokens, context, c, mask, causal=causal)
    permuted_out = model(tokens[:, permutation], context, c, mask, causal=causal)

    torch.testing.assert_close(permuted_out, out[:, permutation], atol=1e-5, rtol=1e-5)


@given(cut=st.integers(0, 4), seed=st.integers(0, 1000))
@settings(max_examples=10, deadline=None)
def test_updateformer_causal_ignores_future_steps(cut, seed):
    model = trained_model()
    tokens, context, c, mask = make_inputs(steps=6, seed=seed)
    perturbed = tokens.clone()
    perturbed[:, :, cut + 1 :] += torch.randn_like(perturbed[:, :, cut + 1 :]) * 3

    out = model(tokens, context, c, mask, causal=True)
    perturbed_out = model(perturbed, context, c, mask, causal=True)
    non_causal = model(perturbed, context, c, mask, causal=False)

    torch.testing.assert_close(perturbed_out[:, :, : cut + 1], out[:, :, : cut + 1])
    assert not torch.allclose(non_causal[:, :, : cut + 1], out[:, :, : cut + 1], atol=1e-4)


@given(extra=st.integers(1, 5), seed=st.integers(0, 1000))
@settings(max_examples=10, deadline=None)
def test_updateformer_masked_context_tokens_change_nothing(extra, seed):
    model = trained_model()
    tokens, context, c, mask = make_inputs(seed=seed)
    noise = torch.randn(2, extra, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))
    padded_context = torch.cat([context, noise * 10], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, extra, dtype=torch.bool)], dim=1)

    out = model(tokens, context, c, mask)
    padded_out = model(tokens, padded_context, c, padded_mask)

    torch.testing.assert_close(padded_out, out, atol=1e-5, rtol=1e-5)


def test_updateformer_samples_are_independent():
    model = trained_model()
    tokens, context, c, mask = make_inputs(batch=3)
    mask[2, 3:] = False

    batched = model(tokens, context, c, mask, causal=True)
    changed = tokens.clone()
    changed[1] = torch.randn_like(changed[1]) * 5

    changed_out = model(changed, context, c, mask, causal=True)
    for i in range(3):
        alone = model(tokens[i : i + 1], context[i : i + 1], c[i : i + 1], mask[i : i + 1], True)
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(changed_out[[0, 2]], batched[[0, 2]], atol=1e-5, rtol=1e-5)


def test_updateformer_per_step_conditioning_with_equal_rows_matches_per_sample():
    model = trained_model()
    tokens, context, c, mask = make_inputs(steps=5)

    per_sample = model(tokens, context, c, mask, causal=True)
    per_step = model(tokens, context, c[:, None, :].expand(2, 5, HIDDEN), mask, causal=True)

    torch.testing.assert_close(per_step, per_sample, atol=1e-6, rtol=1e-6)


def test_updateformer_per_step_conditioning_reaches_only_its_step():
    # Cross and spatial attention act within a step, and causal temporal attention only looks
    # back, so changing the conditioning of step 3 must leave steps 0 to 2 unchanged.
    model = trained_model()
    tokens, context, _, mask = make_inputs(steps=6)
    c = torch.randn(2, 6, HIDDEN)
    changed = c.clone()
    changed[:, 3] = torch.randn(2, HIDDEN)

    out = model(tokens, context, c, mask, causal=True)
    changed_out = model(tokens, context, changed, mask, causal=True)

    torch.testing.assert_close(changed_out[:, :, :3], out[:, :, :3])
    assert not torch.allclose(changed_out[:, :, 3], out[:, :, 3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_updateformer_fully_masked_context_is_finite(dtype):
    model = trained_model().to(dtype)
    tokens, context, c, mask = make_inputs()
    mask[1] = False

    out = model(tokens.to(dtype), context.to(dtype), c.to(dtype), mask, causal=True)

    assert out.dtype == dtype
    assert out.isfinite().all()


def test_updateformer_fused_matches_reference_path():
    model = trained_model()
    reference = make_model(fused_attn=False)
    reference.load_state_dict(model.state_dict())
    tokens, context, c, mask = make_inputs()
    mask[0, 2:] = False

    torch.testing.assert_close(
        model(tokens, context, c, mask, causal=True),
        reference.eval()(tokens, context, c, mask, causal=True),
        atol=1e-5,
        rtol=1e-5,
    )


def test_updateformer_every_parameter_learns():
    torch.manual_seed(0)
    model = make_model(input_dim=3, output_dim=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens, context, c, mask = make_inputs(channels=3)
    target = torch.randn(2, 5, 4, 2)
    ever_nonzero = {name: False for name, _ in model.named_parameters()}

    for _ in range(2):
        optimizer.zero_grad()
        loss = (model(tokens, context, c, mask, causal=True) - target).pow(2).mean()
        loss.backward()
        for name, parameter in model.named_parameters():
            ever_nonzero[name] |= bool(parameter.grad is not None and parameter.grad.any())
        optimizer.step()

    assert [name for name, seen in ever_nonzero.items() if not seen] == []


def test_updateformer_projections_exist_only_when_widths_differ():
    same = make_model()
    different = make_model(input_dim=2, output_dim=7)
    tokens, context, c, mask = make_inputs(channels=2)

    assert isinstance(same.input_proj, torch.nn.Identity)
    assert isinstance(same.output_proj, torch.nn.Identity)
    assert different.input_proj.in_features == 2
    assert different.output_proj.out_features == 7
    assert different(tokens, context, c, mask).shape == (2, 5, 4, 7)


def test_updateformer_without_space_attention_keeps_points_apart():
    model = trained_model(add_space_attn=False)
    tokens, context, c, mask = make_inputs()
    changed = tokens.clone()
    changed[:, 0] += 5.0

    out, changed_out = model(tokens, context, c, mask), model(changed, context, c, mask)

    assert all(layer.space_block is None for layer in model.layers)
    torch.testing.assert_close(changed_out[:, 1:], out[:, 1:])


def test_updateformer_gradient_checkpointing_matches_plain_backward():
    plain = trained_model().train()
    checkpointed = make_model(gradient_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    tokens, context, c, mask = make_inputs()

    for model in (plain, checkpointed):
        model(tokens, context, c, mask, causal=True).square().sum().backward()

    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_updateformer_xavier_init_with_zero_bias():
    model = make_model(input_dim=3)
    block = model.layers[0].time_block

    assert torch.count_nonzero(model.input_proj.bias) == 0
    assert torch.count_nonzero(block.attn.qkv.bias) == 0
    bound = (6 / (HIDDEN + 3 * HIDDEN)) ** 0.5
    assert block.attn.qkv.weight.abs().max() <= bound
    assert block.attn.qkv.weight.std() > bound / 3


@pytest.mark.slow
def test_updateformer_compiles_without_graph_breaks():
    model = trained_model(input_dim=3, output_dim=3).train()
    tokens, context, c, mask = make_inputs(channels=3)
    mask[1, 4:] = False

    eager_out = model(tokens, context, c, mask, causal=True)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    compiled_out = compiled(tokens, context, c, mask, causal=True)
    compiled_out.square().mean().backward()

    torch.testing.assert_close(compiled_out, eager_out, atol=1e-4, rtol=1e-4)
    for eager_grad, p in zip(eager_grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, eager_grad, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"tokens": torch.randn(2, 20, HIDDEN)}, ValueError, r"reshaped with tokens.view"),
        ({"tokens": torch.randn(2, 5, 4, 8)}, ValueError, r"tokens must have 32 channels"),
        ({"context": torch.randn(2, 6, 512)}, ValueError, r"context must have 24 channels.*512"),
        ({"context": torch.randn(3, 6, CONTEXT_DIM)}, ValueError, "context has batch size 3"),
        ({"context_mask": torch.ones(3, 6).bool()}, ValueError, r"context_mask must have shape"),
        ({"context_mask": torch.ones(2, 6)}, TypeError, "context_mask must be a bool tensor"),
        ({"c": torch.randn(2, 16)}, ValueError, r"c must have 32 channels.*got 16"),
        ({"c": torch.randn(3, HIDDEN)}, ValueError, "c has batch size 3 but tokens have 2"),
        ({"c": torch.randn(2, 7, HIDDEN)}, ValueError, "must have T=4 steps"),
        ({"c": torch.randn(2, 1, 4, HIDDEN)}, ValueError, r"c must have shape \(B, C\)"),
    ],
)
def test_updateformer_rejects_bad_input(change, error, match):
    model = make_model()
    tokens, context, c, mask = make_inputs()
    inputs = {"tokens": tokens, "context": context, "c": c, "context_mask": mask, **change}

    with pytest.raises(error, match=match):
        model(**inputs)


def test_updateformer_rejects_zero_depth():
    with pytest.raises(ValueError, match="depth must be a positive number of layers"):
        make_model(depth=0)
