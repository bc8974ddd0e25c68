"""Tests of timestep_embedding and TimestepEmbedder against DiT's conventions."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ditblocks import TimestepEmbedder, timestep_embedding


def direct_formula(t: list[float], dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's embedding written element by element in float64, as an independent reference."""
    half = dim // 2
    rows = []
    for value in t:
        freqs = [math.exp(-math.log(max_period) * i / half) for i in range(half)]
        row = [math.cos(value * f) for f in freqs] + [math.sin(value * f) for f in freqs]
        if dim % 2:
            row.append(0.0)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("dim", [1, 2, 7, 64, 257])
@pytest.mark.parametrize("integer", [True, False])
def test_timestep_embedding_matches_formula(dim, integer):
    values = [0, 1, 17, 500, 999] if integer else [0.0, 0.25, 3.5, 123.456, 999.9]
    t = torch.tensor(values, dtype=torch.int64 if integer else torch.float32)

    embedding = timestep_embedding(t, dim)

    assert embedding.dtype == torch.float32
    assert embedding.shape == (len(values), dim)
    torch.testing.assert_close(embedding.double(), direct_formula(values, dim), atol=2e-4, rtol=0)


def test_timestep_embedding_cos_half_comes_first():
    embedding = timestep_embedding(torch.tensor([0.0]), 6)
    assert embedding[0].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_timestep_embedding_odd_dim_appends_zero_column():
    embedding = timestep_embedding(torch.arange(5), 9)
    assert torch.equal(embedding[:, -1], torch.zeros(5))


def test_timestep_embedding_frequencies_in_float32_for_half_inputs():
    t = torch.tensor([992.0, 432.0])
    low_precision = timestep_embedding(t.to(torch.bfloat16), 32)
    assert low_precision.dtype == torch.float32
    # bf16 represents 992 and 432 exactly, so the features must equal the float32 ones.
    assert torch.equal(low_precision, timestep_embedding(t, 32))


def test_timestep_embedding_keeps_leading_shape():
    t = torch.randint(0, 1000, (3, 5))
    embedding = timestep_embedding(t, 16)
    assert embedding.shape == (3, 5, 16)
    assert torch.equal(embedding[1], timestep_embedding(t[1], 16))


def test_timestep_embedding_accepts_python_number():
    assert torch.equal(timestep_embedding(250, 8), timestep_embedding(torch.tensor(250), 8))


@pytest.mark.parametrize(
    ("t", "dim", "error", "match"),
    [
        (torch.tensor([True]), 8, TypeError, "integer or floating-point"),
        ("500", 8, TypeError, "torch.Tensor or a Python number"),
        (torch.tensor([1.0]), 0, ValueError, "dim must be a positive int"),
    ],
)
def test_timestep_embedding_rejects_bad_input(t, dim, error, match):
    with pytest.raises(error, match=match):
        timestep_embedding(t, dim)


def test_embedder_is_linear_silu_linear_on_features():
    embedder = TimestepEmbedder(32, frequency_embedding_size=16)
    t = torch.tensor([3, 700])

    features = timestep_embedding(t, 16)
    first, second = embedder.mlp[0], embedder.mlp[2]
    expected = second(torch.nn.functional.silu(first(features)))

    assert isinstance(embedder.mlp[1], torch.nn.SiLU)
    torch.testing.assert_close(embedder(t), expected)


def test_embedder_output_dtype_follows_parameters():
    embedder = TimestepEmbedder(32).to(torch.bfloat16)
    assert embedder(torch.tensor([1, 2])).dtype == torch.bfloat16
    assert embedder(torch.tensor([1.5, 2.5], dtype=torch.float64)).dtype == torch.bfloat16


def test_embedder_scalar_broadcasts_to_batch():
    embedder = TimestepEmbedder(16)
    from_number = embedder(400, batch_size=3)
    from_tensor = embedder(torch.tensor(400.0), batch_size=3)

    assert from_number.shape == (3, 16)
    assert torch.equal(from_number, from_tensor)
    assert torch.equal(from_number[0], from_number[2])
    assert embedder(400).shape == (1, 16)


@given(batch=st.integers(1, 3), steps=st.integers(1, 6))
@settings(max_examples=10, deadline=None)
def test_embedder_per_step_rows_match_per_sample(batch, steps):
    embedder = TimestepEmbedder(16)
    t = torch.randint(0, 1000, (batch, steps))

    per_step = embedder(t)

    assert per_step.shape == (batch, steps, 16)
    for step in range(steps):
        torch.testing.assert_close(per_step[:, step], embedder(t[:, step]))


def test_embedder_timestep_scale_multiplies_timesteps():
    scaled = TimestepEmbedder(16, timestep_scale=1000.0)
    plain = TimestepEmbedder(16)
    plain.load_state_dict(scaled.state_dict())

    t = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(scaled(t), plain(t * 1000.0))


def test_embedder_timestep_scale_separates_unit_interval():
    # On [0, 1] with max_period 10000 the features of t=0.5 and t=0.6 nearly coincide; scaled
    # by 1000 they differ clearly.
    close = (timestep_embedding(0.5, 256) - timestep_embedding(0.6, 256)).norm()
    far = (timestep_embedding(500.0, 256) - timestep_embedding(600.0, 256)).norm()
    assert close < 0.5
    assert far > 5.0


@pytest.mark.parametrize(
    ("timesteps", "batch_size", "match"),
    [
        (torch.zeros(2, 3, 4), None, r"\(\), \(B,\) or \(B, T\)"),
        (torch.zeros(2), 3, "batch size 2 but batch_size=3"),
        (torch.tensor([True, False]), None, "integer or floating-point"),
    ],
)
def test_embedder_rejects_bad_timesteps(timesteps, batch_size, match):
    embedder = TimestepEmbedder(16)
    with pytest.raises((ValueError, TypeError), match=match):
        embedder(timesteps, batch_size=batch_size)
