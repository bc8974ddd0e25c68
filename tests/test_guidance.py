"""Tests for classifier-free guidance and the scheduler-driven sampler in ditblocks.guidance."""

from __future__ import annotations

import doctest
import logging

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import ditblocks.guidance
from ditblocks.guidance import classifier_free_guidance, sample

BATCH = 3
POINTS = 4
CHANNELS = 2
SHAPE = (BATCH, POINTS, CHANNELS)


# --------------------------------------------------------------------------------------------
# Helpers: denoisers with a known right result
# --------------------------------------------------------------------------------------------


def make_ddim(num_train_timesteps: int = 1000, **config) -> DDIMScheduler:
    config.setdefault("clip_sample", False)
    config.setdefault("timestep_spacing", "trailing")
    return DDIMScheduler(num_train_timesteps=num_train_timesteps, **config)


def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def make_epsilon_oracle(alphas_cumprod: torch.Tensor, x0: torch.Tensor):
    """Return a denoiser whose epsilon is the noise that turns x0 into the current x.

    For x = sqrt(a_t) x0 + sqrt(1 - a_t) eps, this solves for eps from x, t and x0, so it is the
    exact epsilon for data that always equals x0, whatever x the sampler starts from.
    """

    def oracle(x, t, cond):
        a = broadcast_to(alphas_cumprod[t], x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return oracle


def gaussian_posterior(alphas_cumprod, mean, std, x, t):
    """Return the exact E[eps | x_t] and E[x0 | x_t] for data x0 ~ N(mean, std**2) per entry."""
    assert (t == t[0]).all()
    a = alphas_cumprod[t[0]].to(x.dtype)  # one timestep per call, so a scalar suffices
    variance = a * std**2 + (1 - a)
    epsilon = (1 - a).sqrt() * (x - a.sqrt() * mean) / variance
    x0 = (x - (1 - a).sqrt() * epsilon) / a.sqrt()
    return epsilon, x0


class TinyDenoiser(torch.nn.Module):
    """A small nonlinear model whose rows are independent, conditioned on a (B, C) vector."""

    def __init__(self, channels: int = CHANNELS, cond_dim: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(channels + cond_dim + 1, 16),
            torch.nn.GELU(),
            torch.nn.Linear(16, channels),
        )

    def forward(self, x, t, cond):
        condition = cond[:, None, :].expand(-1, x.shape[1], -1)
        time = (t.float() / 1000.0)[:, None, None].expand(-1, x.shape[1], 1)
        return self.net(torch.cat([x, condition, time], dim=-1))


class MaskedPoolDenoiser(torch.nn.Module):
    """A model that averages its context tokens under a key-padding mask (True = attend)."""

    def __init__(self, channels: int = CHANNELS, context_dim: int = 6):
        super().__init__()
        torch.manual_seed(1)
        self.context = torch.nn.Linear(context_dim, channels)
        self.body = torch.nn.Linear(channels, channels)

    def forward(self, x, t, cond):
        tokens, mask = cond["tokens"], cond["mask"]
        weights = mask.to(tokens.dtype)[..., None]
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)
        return torch.tanh(self.body(x)) + self.context(pooled)[:, None, :] * (
            1 + t.float()[:, None, None] / 1000
        )


def two_pass_reference(denoise, scheduler, shape, cond, uncond, scale, steps, seed):
    """Sample with separate conditional and unconditional calls, as a plain loop."""
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        t_batch = t.reshape(1).repeat(shape[0])
        cond_out = denoise(model_input, t_batch, cond)
        uncond_out = denoise(model_input, t_batch, uncond)
        scale_view = scale if isinstance(scale, float) else scale.reshape(-1, 1, 1)
        prediction = uncond_out + scale_view * (cond_out - uncond_out)
        x = scheduler.step(prediction, t, x).prev_sample
    return x


class CallRecorder:
    """Wrap a denoiser and record the batch size and inputs of every call."""

    def __init__(self, denoise):
        self.denoise = denoise
        self.batch_sizes: list[int] = []
        self.inputs: list[torch.Tensor] = []
        self.conds: list = []

    def __call__(self, x, t, cond):
        self.batch_sizes.append(x.shape[0])
        self.inputs.append(x.clone())
        self.conds.append(cond)
        return self.denoise(x, t, cond)


# --------------------------------------------------------------------------------------------
# classifier_free_guidance
# --------------------------------------------------------------------------------------------


def random_pair(seed: int, shape=(4, 3, 5)):
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(shape, generator=generator)
    uncond = torch.randn(shape, generator=generator)
    return cond, uncond


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(-5, 15))
def test_cfg_matches_linear_formula(seed, scale):
    cond, uncond = random_pair(seed)

    guided = classifier_free_guidance(cond, uncond, scale)

    expected = cond.numpy() * scale + uncond.numpy() * (1 - scale)
    np.testing.assert_allclose(guided.numpy(), expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), rescale=st.floats(0, 1))
def test_cfg_scale_one_returns_cond(seed, rescale):
    cond, uncond = random_pair(seed)

    guided = classifier_free_guidance(cond, uncond, 1.0, rescale=rescale)

    torch.testing.assert_close(guided, cond)


def test_cfg_scale_zero_returns_uncond():
    cond, uncond = random_pair(0)

    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond)


def test_cfg_rescale_matches_paper_equations():
    cond, uncond = random_pair(1)
    scale, phi = 7.5, 0.7

    guided = classifier_free_guidance(cond, uncond, scale, rescale=phi)

    # Lin et al. 2024, eqs. 15-16, one sample at a time in NumPy.
    for i in range(cond.shape[0]):
        c, u = cond[i].numpy().astype(np.float64), uncond[i].numpy().astype(np.float64)
        x_cfg = u + scale * (c - u)
        x_rescaled = x_cfg * c.std() / x_cfg.std()
        expected = phi * x_rescaled + (1 - phi) * x_cfg
        np.testing.assert_allclose(guided[i].numpy(), expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1.5, 20))
def test_cfg_full_rescale_restores_cond_std(seed, scale):
    cond, uncond = random_pair(seed)

    guided = classifier_free_guidance(cond, uncond, scale, rescale=1.0)

    for i in range(cond.shape[0]):
        torch.testing.assert_close(guided[i].std(), cond[i].std(), rtol=1e-4, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), phi=st.floats(0, 1))
def test_cfg_rescale_blends_linearly(seed, phi):
    cond, uncond = random_pair(seed)

    plain = classifier_free_guidance(cond, uncond, 5.0, rescale=0.0)
    full = classifier_free_guidance(cond, uncond, 5.0, rescale=1.0)
    blended = classifier_free_guidance(cond, uncond, 5.0, rescale=phi)

    torch.testing.assert_close(blended, phi * full + (1 - phi) * plain, rtol=1e-5, atol=1e-5)


def test_cfg_rescale_constant_prediction_stays_finite():
    cond = torch.ones(2, 3)
    uncond = torch.ones(2, 3)

    guided = classifier_free_guidance(cond, uncond, 3.0, rescale=0.7)

    assert torch.isfinite(guided).all()
    torch.testing.assert_close(guided, cond)


def test_cfg_per_sample_scale_matches_scalar_calls():
    cond, uncond = random_pair(2)
    scales = torch.tensor([0.0, 1.0, 2.5, 7.0])

    guided = classifier_free_guidance(cond, uncond, scales, rescale=0.5)

    for i, scale in enumerate(scales.tolist()):
        expected = classifier_free_guidance(cond[i : i + 1], uncond[i : i + 1], scale, rescale=0.5)
        torch.testing.assert_close(guided[i : i + 1], expected)


def test_cfg_zero_dim_tensor_scale_broadcasts():
    cond, uncond = random_pair(3)

    guided = classifier_free_guidance(cond, uncond, torch.tensor(3.0))

    torch.testing.assert_close(guided, classifier_free_guidance(cond, uncond, 3.0))


@pytest.mark.parametrize(
    ("cond", "uncond", "scale", "rescale", "error", "message"),
    [
        ([1.0], torch.zeros(1), 2.0, 0.0, TypeError, "cond must be a torch.Tensor"),
        (torch.zeros(2, 3), torch.zeros(2, 4), 2.0, 0.0, ValueError, "same shape"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), 2.0, 0.0, ValueError, "dtype"),
        (
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 3, dtype=torch.long),
            2.0,
            0.0,
            TypeError,
            "floating-point",
        ),
        (torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), 0.0, ValueError, r"shape \(2,\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3), "2", 0.0, TypeError, "scale must be a float"),
        (torch.zeros(2, 3), torch.zeros(2, 3), float("nan"), 0.0, ValueError, "finite"),
        (
            torch.zeros(2, 3),
            torch.zeros(2, 3),
            2.0,
            1.5,
            ValueError,
            r"rescale must be in \[0, 1\]",
        ),
        (torch.zeros(2), torch.zeros(2), 2.0, 0.5, ValueError, "at least two dims"),
    ],
)
def test_cfg_rejects_bad_input(cond, uncond, scale, rescale, error, message):
    with pytest.raises(error, match=message):
        classifier_free_guidance(cond, uncond, scale, rescale=rescale)


# --------------------------------------------------------------------------------------------
# Schedule arithmetic: oracle denoisers recover x0
# --------------------------------------------------------------------------------------------


ORACLE_CASES = [
    (1000, 1),
    (1000, 7),
    (1000, 50),
    (1000, 1000),
    (100, 1),
    (100, 7),
    (100, 50),
    (100, 100),
]


def ddim_ends_at_timestep_zero(scheduler: DDIMScheduler, num_inference_steps: int) -> bool:
    """Whether DDIM's last step goes to timestep 0 instead of the clean sample.

    DDIM takes the previous timestep as t - num_train_timesteps // num_inference_steps. With
    "trailing" spacing the last t can be that step size or more (t=142 for 7 of 1000 steps),
    so the last step lands on timestep 0, which still contains noise.
    """
    scheduler.set_timesteps(num_inference_steps)
    step = scheduler.config.num_train_timesteps // num_inference_steps
    return scheduler.timesteps[-1].item() - step >= 0


@pytest.mark.parametrize(("num_train_timesteps", "num_inference_steps"), ORACLE_CASES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_oracle_recovers_x0(num_train_timesteps, num_inference_steps, spacing):
    scheduler = make_ddim(num_train_timesteps, timestep_spacing=spacing)
    if ddim_ends_at_timestep_zero(scheduler, num_inference_steps):
        pytest.skip("DDIM ends at timestep 0 here; see test_ddim_trailing_uneven_steps_*")
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)) * 2
    oracle = make_epsilon_oracle(scheduler.alphas_cumprod, x0)

    result = sample(
        oracle,
        scheduler,
        SHAPE,
        cond=None,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator().manual_seed(0),
    )

    torch.testing.assert_close(result, x0, rtol=0, atol=1e-4)


def test_ddim_leading_never_ends_at_timestep_zero():
    skipped = [
        case
        for case in ORACLE_CASES
        if ddim_ends_at_timestep_zero(make_ddim(case[0], timestep_spacing="leading"), case[1])
    ]

    assert skipped == []


def test_ddim_trailing_uneven_steps_stop_at_timestep_zero():
    """7 of 1000 "trailing" steps end at timestep 0 in diffusers 0.42, not at the clean x0."""
    scheduler = make_ddim(1000, timestep_spacing="trailing")
    assert ddim_ends_at_timestep_zero(scheduler, 7)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)) * 2
    oracle = make_epsilon_oracle(scheduler.alphas_cumprod, x0)
    inputs = []

    def recording_oracle(x, t, cond):
        inputs.append((x, t))
        return oracle(x, t, cond)

    result = sample(
        recording_oracle,
        scheduler,
        SHAPE,
        None,
        num_inference_steps=7,
        generator=torch.Generator().manual_seed(0),
    )

    last_x, last_t = inputs[-1]
    a0 = scheduler.alphas_cumprod[0]
    expected = a0.sqrt() * x0 + (1 - a0).sqrt() * oracle(last_x, last_t, None)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-4)
    assert (result - x0).abs().max() > 1e-3


def test_ddim_oracle_epsilon_is_constant_along_path():
    """With eta 0 the noise that produced x_T is also the noise behind every later x_t."""
    scheduler = make_ddim()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    oracle = make_epsilon_oracle(scheduler.alphas_cumprod.double(), x0)
    outputs = []

    def recording_oracle(x, t, cond):
        outputs.append(oracle(x, t, cond))
        return outputs[-1]

    sample(
        recording_oracle,
        scheduler,
        SHAPE,
        None,
        num_inference_steps=25,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(1),
    )

    # DDIM takes square roots of its float32 alphas_cumprod, hence 1e-6 and not float64 eps.
    assert len(outputs) == 25
    for epsilon in outputs[1:]:
        torch.testing.assert_close(epsilon, outputs[0], rtol=0, atol=1e-6)


def test_ddim_v_prediction_oracle_recovers_x0():
    scheduler = make_ddim(prediction_type="v_prediction")
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    epsilon_oracle = make_epsilon_oracle(scheduler.alphas_cumprod, x0)

    def v_oracle(x, t, cond):
        a = broadcast_to(scheduler.alphas_cumprod[t], x)
        return a.sqrt() * epsilon_oracle(x, t, cond) - (1 - a).sqrt() * x0

    result = sample(v_oracle, scheduler, SHAPE, None, num_inference_steps=20)

    torch.testing.assert_close(result, x0, rtol=0, atol=1e-4)


def test_euler_oracle_recovers_x0():
    scheduler = EulerDiscreteScheduler()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8))

    def oracle(x, t, cond):
        # Euler feeds the model x_sigma / sqrt(sigma^2 + 1), the variance-preserving x_t with
        # alpha_bar = 1 / (1 + sigma^2); the test reads sigma from the scheduler's own table.
        index = (scheduler.timesteps == t[0]).nonzero()[0].item()
        a = 1 / (1 + scheduler.sigmas[index] ** 2)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    result = sample(oracle, scheduler, SHAPE, None, num_inference_steps=15)

    assert scheduler.init_noise_sigma > 1
    torch.testing.assert_close(result, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matching_velocity_oracle_recovers_x0(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    recorder = CallRecorder(
        lambda x, t, cond: (x - x0) / broadcast_to(t / scheduler.config.num_train_timesteps, x)
    )

    result = sample(recorder, scheduler, SHAPE, None, num_inference_steps=12)

    # x_t = (1 - sigma) x0 + sigma * noise, so the velocity noise - x0 is (x_t - x0) / sigma.
    assert len(recorder.batch_sizes) == 12
    torch.testing.assert_close(result, x0, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Distribution: exact denoiser for Gaussian data
# --------------------------------------------------------------------------------------------

GAUSSIAN_MEAN = torch.tensor([2.0, -1.0, 0.5, 0.0])
GAUSSIAN_STD = torch.tensor([0.5, 1.5, 1.0, 0.2])
GAUSSIAN_SHAPE = (4000, 4)  # 16k elements: below torch's threading grain size, so fast


def gaussian_epsilon_denoiser(alphas_cumprod):
    def denoise(x, t, cond):
        return gaussian_posterior(alphas_cumprod, GAUSSIAN_MEAN, GAUSSIAN_STD, x, t)[0]

    return denoise


def gaussian_samples(denoise, scheduler, steps):
    return sample(
        denoise,
        scheduler,
        GAUSSIAN_SHAPE,
        None,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(10),
    )


# Deterministic samplers shrink the variance at few steps (DDIM: std 0.14 for 0.2 at 20 steps,
# 0.194 at 200),
# so the standard deviation is checked at more steps than the mean.
@pytest.mark.parametrize(
    ("scheduler_factory", "mean_steps", "std_steps"),
    [
        (make_ddim, 20, 500),
        (DPMSolverMultistepScheduler, 10, 100),
        (lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), 50, 100),
    ],
    ids=["ddim-trailing", "dpmsolver++", "sde-dpmsolver++"],
)
def test_gaussian_epsilon_denoiser_reaches_moments(scheduler_factory, mean_steps, std_steps):
    scheduler = scheduler_factory()
    denoise = gaussian_epsilon_denoiser(scheduler.alphas_cumprod)

    few_steps = gaussian_samples(denoise, scheduler, mean_steps)
    many_steps = gaussian_samples(denoise, scheduler, std_steps)

    torch.testing.assert_close(few_steps.mean(0), GAUSSIAN_MEAN, rtol=0, atol=0.05)
    torch.testing.assert_close(many_steps.mean(0), GAUSSIAN_MEAN, rtol=0, atol=0.05)
    torch.testing.assert_close(many_steps.std(0), GAUSSIAN_STD, rtol=0.05, atol=0)


def test_gaussian_v_prediction_ddim_reaches_moments():
    scheduler = make_ddim(prediction_type="v_prediction")
    alphas = scheduler.alphas_cumprod

    def denoise(x, t, cond):
        epsilon, x0 = gaussian_posterior(alphas, GAUSSIAN_MEAN, GAUSSIAN_STD, x, t)
        a = alphas[t[0]]
        return a.sqrt() * epsilon - (1 - a).sqrt() * x0

    samples = gaussian_samples(denoise, scheduler, 500)

    torch.testing.assert_close(samples.mean(0), GAUSSIAN_MEAN, rtol=0, atol=0.05)
    torch.testing.assert_close(samples.std(0), GAUSSIAN_STD, rtol=0.05, atol=0)


def test_ddim_single_step_spacing_trailing_vs_leading():
    """One "leading" step runs the model only at t=0 and leaves the noise almost as drawn."""
    trailing = make_ddim(timestep_spacing="trailing")
    leading = make_ddim(timestep_spacing="leading")

    trailing_samples = sample(
        gaussian_epsilon_denoiser(trailing.alphas_cumprod),
        trailing,
        GAUSSIAN_SHAPE,
        None,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(12),
    )
    leading_samples = sample(
        gaussian_epsilon_denoiser(leading.alphas_cumprod),
        leading,
        GAUSSIAN_SHAPE,
        None,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(12),
    )

    torch.testing.assert_close(trailing_samples.mean(0), GAUSSIAN_MEAN, rtol=0, atol=0.05)
    assert (leading_samples.mean(0) - GAUSSIAN_MEAN).abs().max() > 1.0
    torch.testing.assert_close(leading_samples.std(0), torch.ones(4), rtol=0.1, atol=0)


# --------------------------------------------------------------------------------------------
# Guidance inside the sampler
# --------------------------------------------------------------------------------------------


def guided_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(BATCH, 5, generator=generator)
    uncond = torch.zeros(BATCH, 5)
    return cond, uncond


@pytest.mark.parametrize(
    "scheduler_factory",
    [make_ddim, DPMSolverMultistepScheduler, EulerDiscreteScheduler],
    ids=["ddim", "dpmsolver", "euler"],
)
def test_batched_cfg_equals_two_passes(scheduler_factory):
    model = TinyDenoiser()
    cond, uncond = guided_inputs()
    recorder = CallRecorder(model)

    batched = sample(
        recorder,
        scheduler_factory(),
        SHAPE,
        cond,
        uncond,
        guidance_scale=3.0,
        num_inference_steps=8,
        generator=torch.Generator().manual_seed(2),
    )
    with torch.no_grad():
        reference = two_pass_reference(model, scheduler_factory(), SHAPE, cond, uncond, 3.0, 8, 2)

    assert recorder.batch_sizes == [2 * BATCH] * 8
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-5)


def test_batched_cfg_pairs_each_sample_with_own_null():
    cond, uncond = guided_inputs()
    uncond = torch.randn(BATCH, 5, generator=torch.Generator().manual_seed(4))
    recorder = CallRecorder(TinyDenoiser())

    sample(recorder, make_ddim(), SHAPE, cond, uncond, guidance_scale=2.0, num_inference_steps=2)

    first_cond = recorder.conds[0]
    torch.testing.assert_close(first_cond[:BATCH], cond, rtol=0, atol=0)
    torch.testing.assert_close(first_cond[BATCH:], uncond, rtol=0, atol=0)
    torch.testing.assert_close(recorder.inputs[0][:BATCH], recorder.inputs[0][BATCH:])


@pytest.mark.parametrize(
    ("uncond_given", "scale"),
    [(True, 1.0), (False, 4.0), (True, torch.ones(BATCH))],
    ids=["scale-one", "no-uncond", "per-sample-ones"],
)
def test_unguided_sampling_calls_model_once_per_step(uncond_given, scale):
    cond, uncond = guided_inputs()
    recorder = CallRecorder(TinyDenoiser())

    sample(
        recorder,
        make_ddim(),
        SHAPE,
        cond,
        uncond if uncond_given else None,
        guidance_scale=scale,
        num_inference_steps=6,
    )

    assert recorder.batch_sizes == [BATCH] * 6
    torch.testing.assert_close(recorder.conds[0], cond, rtol=0, atol=0)


def test_per_sample_scales_match_scalar_runs():
    model = TinyDenoiser()
    cond, uncond = guided_inputs()
    scales = torch.tensor([1.0, 3.0, 0.0])

    mixed = sample(
        model,
        make_ddim(),
        SHAPE,
        cond,
        uncond,
        guidance_scale=scales,
        num_inference_steps=6,
        generator=torch.Generator().manual_seed(3),
    )

    for i, scale in enumerate(scales.tolist()):
        single = sample(
            model,
            make_ddim(),
            SHAPE,
            cond,
            uncond,
            guidance_scale=scale,
            num_inference_steps=6,
            generator=torch.Generator().manual_seed(3),
        )
        torch.testing.assert_close(mixed[i], single[i], rtol=1e-5, atol=1e-5)


def test_guidance_rescale_changes_sample():
    model = TinyDenoiser()
    cond, uncond = guided_inputs()
    common = dict(guidance_scale=6.0, num_inference_steps=5)

    plain = sample(
        model,
        make_ddim(),
        SHAPE,
        cond,
        uncond,
        **common,
        generator=torch.Generator().manual_seed(4),
    )
    rescaled = sample(
        model,
        make_ddim(),
        SHAPE,
        cond,
        uncond,
        guidance_rescale=0.7,
        **common,
        generator=torch.Generator().manual_seed(4),
    )

    assert not torch.allclose(plain, rescaled)
    assert torch.isfinite(rescaled).all()


# --------------------------------------------------------------------------------------------
# Structured conditions with different token counts
# --------------------------------------------------------------------------------------------


def context_conditions(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    cond = {
        "tokens": torch.randn(BATCH, 5, 6, generator=generator),
        "mask": torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4]),
    }
    uncond = {
        "tokens": torch.randn(BATCH, 1, 6, generator=generator),
        "mask": torch.ones(BATCH, 1, dtype=torch.bool),
    }
    return cond, uncond


def test_dict_conditions_padded_to_common_length():
    cond, uncond = context_conditions()
    recorder = CallRecorder(MaskedPoolDenoiser())

    sample(recorder, make_ddim(), SHAPE, cond, uncond, guidance_scale=2.0, num_inference_steps=2)

    merged = recorder.conds[0]
    assert merged["tokens"].shape == (2 * BATCH, 5, 6)
    assert merged["mask"].shape == (2 * BATCH, 5)
    assert merged["mask"].dtype == torch.bool
    assert torch.equal(merged["tokens"][:BATCH], cond["tokens"])
    assert torch.equal(merged["mask"][:BATCH], cond["mask"])
    assert torch.equal(merged["tokens"][BATCH:, :1], uncond["tokens"])
    assert torch.equal(merged["tokens"][BATCH:, 1:], torch.zeros(BATCH, 4, 6))
    assert torch.equal(merged["mask"][BATCH:, :1], uncond["mask"])
    assert not merged["mask"][BATCH:, 1:].any()


def test_dict_conditions_match_unpadded_two_passes():
    model = MaskedPoolDenoiser()
    cond, uncond = context_conditions()

    batched = sample(
        model,
        make_ddim(),
        SHAPE,
        cond,
        uncond,
        guidance_scale=2.5,
        num_inference_steps=6,
        generator=torch.Generator().manual_seed(5),
    )
    with torch.no_grad():
        reference = two_pass_reference(model, make_ddim(), SHAPE, cond, uncond, 2.5, 6, 5)

    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-5)


def test_tuple_conditions_padded_and_match_two_passes():
    dict_model = MaskedPoolDenoiser()
    cond, uncond = context_conditions()

    def tuple_model(x, t, condition):
        tokens, mask = condition
        return dict_model(x, t, {"tokens": tokens, "mask": mask})

    recorder = CallRecorder(tuple_model)
    batched = sample(
        recorder,
        make_ddim(),
        SHAPE,
        (cond["tokens"], cond["mask"]),
        (uncond["tokens"], uncond["mask"]),
        guidance_scale=2.5,
        num_inference_steps=6,
        generator=torch.Generator().manual_seed(5),
    )
    with torch.no_grad():
        reference = two_pass_reference(dict_model, make_ddim(), SHAPE, cond, uncond, 2.5, 6, 5)

    assert isinstance(recorder.conds[0], tuple)
    assert recorder.conds[0][0].shape == (2 * BATCH, 5, 6)
    assert not recorder.conds[0][1][BATCH:, 1:].any()
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-5)


def test_unmasked_padding_logs_warning(caplog):
    cond = torch.randn(BATCH, 5, 6)
    uncond = torch.randn(BATCH, 2, 6)

    def denoise(x, t, condition):
        assert condition.shape == (2 * BATCH, 5, 6)
        return torch.zeros_like(x)

    with caplog.at_level(logging.WARNING, logger="ditblocks.guidance"):
        sample(denoise, make_ddim(), SHAPE, cond, uncond, guidance_scale=2.0, num_inference_steps=1)

    assert "key-padding mask" in caplog.text


def test_masked_padding_logs_no_warning(caplog):
    cond, uncond = context_conditions()

    with caplog.at_level(logging.WARNING, logger="ditblocks.guidance"):
        sample(
            MaskedPoolDenoiser(),
            make_ddim(),
            SHAPE,
            cond,
            uncond,
            guidance_scale=2.0,
            num_inference_steps=1,
        )

    assert caplog.text == ""


# --------------------------------------------------------------------------------------------
# Known-value pinning, reproducibility, intermediates
# --------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scheduler_name=st.sampled_from(["ddim", "dpmsolver", "euler", "flow"]),
    guided=st.booleans(),
)
def test_pinned_values_exact(seed, scheduler_name, guided):
    schedulers = {
        "ddim": make_ddim,
        "dpmsolver": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "flow": FlowMatchEulerDiscreteScheduler,
    }
    generator = torch.Generator().manual_seed(seed)
    known = torch.randn(SHAPE, generator=generator) * 3
    known_mask = torch.rand(SHAPE, generator=generator) < 0.4
    cond, uncond = guided_inputs(seed)
    recorder = CallRecorder(TinyDenoiser())

    result, intermediates = sample(
        recorder,
        schedulers[scheduler_name](),
        SHAPE,
        cond,
        uncond if guided else None,
        guidance_scale=2.0,
        num_inference_steps=4,
        known=known,
        known_mask=known_mask,
        return_intermediates=True,
    )

    assert torch.equal(result[known_mask], known[known_mask])
    for step_sample in intermediates:
        assert torch.equal(step_sample[known_mask], known[known_mask])
    if scheduler_name in ("ddim", "dpmsolver", "flow"):
        # These schedulers pass the sample to the model unscaled, so it receives the known values.
        for model_input in recorder.inputs:
            for half in model_input.split(BATCH):
                assert torch.equal(half[known_mask], known[known_mask])


def test_pinning_broadcasts_first_time_step():
    known = torch.zeros(1, POINTS, 1)
    known_mask = torch.zeros(1, POINTS, 1, dtype=torch.bool)
    known_mask[:, 0] = True

    result = sample(
        TinyDenoiser(),
        make_ddim(),
        SHAPE,
        guided_inputs()[0],
        known=known,
        known_mask=known_mask,
        num_inference_steps=3,
    )

    assert torch.equal(result[:, 0], torch.zeros(BATCH, CHANNELS))
    assert (result[:, 1:] != 0).all()


def test_sample_reproducible_with_generator():
    cond, uncond = guided_inputs()
    model = TinyDenoiser()

    def run(seed):
        return sample(
            model,
            make_ddim(),
            SHAPE,
            cond,
            uncond,
            guidance_scale=2.0,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(seed),
            step_kwargs={"eta": 1.0},
        )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_sample_stochastic_steps_use_generator():
    """DDIM with eta 1 draws step noise, and only the sampler's generator decides it."""
    model = TinyDenoiser()
    cond = guided_inputs()[0]

    def run():
        torch.manual_seed(torch.seed())  # disturb the global generator between runs
        return sample(
            model,
            make_ddim(),
            SHAPE,
            cond,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(0),
            step_kwargs={"eta": 1.0},
        )

    deterministic = sample(
        model,
        make_ddim(),
        SHAPE,
        cond,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(run(), run())
    assert not torch.equal(run(), deterministic)


def test_intermediates_one_per_step():
    result, intermediates = sample(
        TinyDenoiser(),
        make_ddim(),
        SHAPE,
        guided_inputs()[0],
        num_inference_steps=5,
        return_intermediates=True,
    )

    assert len(intermediates) == 5
    assert torch.equal(intermediates[-1], result)
    assert not torch.equal(intermediates[0], intermediates[1])


def test_sample_dtype_and_timesteps_passed_through():
    recorder = CallRecorder(lambda x, t, cond: torch.zeros_like(x))
    timesteps_seen = []

    def denoise(x, t, cond):
        timesteps_seen.append(t.clone())
        return recorder(x, t, cond)

    scheduler = make_ddim()
    result = sample(denoise, scheduler, SHAPE, None, num_inference_steps=3, dtype=torch.float64)

    assert result.dtype == torch.float64
    assert recorder.inputs[0].dtype == torch.float64
    assert all(t.shape == (BATCH,) and t.dtype == torch.int64 for t in timesteps_seen)
    assert [t[0].item() for t in timesteps_seen] == scheduler.timesteps.tolist()


def test_initial_noise_scaled_by_init_noise_sigma():
    scheduler = EulerDiscreteScheduler()
    raw = []

    def denoise(x, t, cond):
        raw.append(x * (scheduler.sigmas[0] ** 2 + 1).sqrt())  # undo scale_model_input
        return torch.zeros_like(x)

    sample(
        denoise,
        scheduler,
        SHAPE,
        None,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(13),
    )

    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(raw[0], noise * scheduler.init_noise_sigma)


# --------------------------------------------------------------------------------------------
# Bad input: every check runs before the model is called
# --------------------------------------------------------------------------------------------


class NoSetTimesteps:
    def step(self, *args, **kwargs):
        raise AssertionError("never reached")


BAD_SAMPLE_INPUTS = [
    ("scheduler", NoSetTimesteps(), TypeError, r"set_timesteps\(\)"),
    ("denoise", "model", TypeError, "denoise must be callable"),
    ("shape", (0, 4, 2), ValueError, "positive ints"),
    ("shape", "3x4", TypeError, "shape must be a tuple"),
    ("num_inference_steps", 0, ValueError, "num_inference_steps must be a positive int, got 0"),
    ("num_inference_steps", -3, ValueError, "got -3"),
    ("num_inference_steps", 2.5, TypeError, "num_inference_steps must be an int"),
    ("cond", torch.zeros(BATCH + 1, 5), ValueError, r"cond has shape \(4, 5\).*shape\[0\]=3"),
    ("uncond", torch.zeros(BATCH - 1, 5), ValueError, r"uncond has shape \(2, 5\)"),
    ("uncond", {"x": torch.zeros(BATCH, 5)}, TypeError, "same structure"),
    ("uncond", torch.zeros(BATCH, 5, dtype=torch.float64), ValueError, "share a dtype"),
    ("cond", [[torch.zeros(BATCH, 5)]], TypeError, "nested containers"),
    ("cond", "text", TypeError, "cond must be a tensor"),
    ("guidance_scale", torch.ones(BATCH + 2), ValueError, r"shape \(3,\)"),
    ("guidance_scale", "2", TypeError, "guidance_scale must be a float"),
    ("guidance_rescale", -0.1, ValueError, "guidance_rescale must be in"),
    ("known", torch.zeros(SHAPE), ValueError, "known_mask is missing"),
    ("known_mask", torch.ones(SHAPE, dtype=torch.bool), ValueError, "known is missing"),
    ("generator", 42, TypeError, "generator must be a torch.Generator"),
    ("dtype", torch.int32, TypeError, "dtype must be a floating"),
    ("return_intermediates", "yes", TypeError, "return_intermediates must be a bool"),
    ("step_kwargs", {"churn": 1.0}, ValueError, "'churn'.*does not accept"),
    ("step_kwargs", {"sample": 1.0}, ValueError, "must not set"),
]


def valid_sample_arguments():
    cond, uncond = guided_inputs()
    return dict(
        denoise=CallRecorder(TinyDenoiser()),
        scheduler=make_ddim(),
        shape=SHAPE,
        cond=cond,
        uncond=uncond,
        guidance_scale=2.0,
        num_inference_steps=3,
    )


@pytest.mark.parametrize(
    ("argument", "value", "error", "message"),
    BAD_SAMPLE_INPUTS,
    ids=[f"{case[0]}-{index}" for index, case in enumerate(BAD_SAMPLE_INPUTS)],
)
def test_sample_rejects_bad_input(argument, value, error, message):
    arguments = valid_sample_arguments()
    recorder = arguments["denoise"]
    arguments[argument] = value

    with pytest.raises(error, match=message):
        sample(**arguments)

    assert recorder.batch_sizes == []


@pytest.mark.parametrize(
    ("known", "known_mask", "error", "message"),
    [
        (torch.zeros(SHAPE), torch.ones(SHAPE), TypeError, "known_mask must be a bool tensor"),
        (
            torch.zeros(SHAPE),
            torch.ones(BATCH, 5, dtype=torch.bool),
            ValueError,
            r"known_mask has shape \(3, 5\).*does not broadcast",
        ),
        (
            torch.zeros(BATCH, 7, 1),
            torch.ones(SHAPE, dtype=torch.bool),
            ValueError,
            r"known has shape \(3, 7, 1\)",
        ),
        (
            torch.zeros(SHAPE, dtype=torch.long),
            torch.ones(SHAPE, dtype=torch.bool),
            TypeError,
            "known must be a floating-point",
        ),
        (
            torch.zeros(2, *SHAPE),
            torch.ones(SHAPE, dtype=torch.bool),
            ValueError,
            "does not broadcast",
        ),
    ],
)
def test_sample_rejects_bad_known(known, known_mask, error, message):
    arguments = valid_sample_arguments()

    with pytest.raises(error, match=message):
        sample(**arguments, known=known, known_mask=known_mask)

    assert arguments["denoise"].batch_sizes == []


@pytest.mark.parametrize(
    ("cond", "uncond", "error", "message"),
    [
        ({"a": torch.zeros(BATCH, 2)}, {"b": torch.zeros(BATCH, 2)}, ValueError, "same keys"),
        (
            (torch.zeros(BATCH, 2),),
            (torch.zeros(BATCH, 2), torch.zeros(BATCH, 2)),
            ValueError,
            "same length",
        ),
        (torch.zeros(BATCH, 4, 6), torch.zeros(BATCH, 4, 7), ValueError, "only in dim 1"),
        (
            (torch.zeros(BATCH, 2), None),
            (torch.zeros(BATCH, 2), torch.zeros(BATCH, 2)),
            ValueError,
            r"cond\[1\] and uncond\[1\] must both be tensors or both be None",
        ),
        (None, torch.zeros(BATCH, 2), ValueError, "cond is None"),
    ],
)
def test_sample_rejects_mismatched_conditions(cond, uncond, error, message):
    arguments = valid_sample_arguments()
    arguments.update(cond=cond, uncond=uncond)

    with pytest.raises(error, match=message):
        sample(**arguments)

    assert arguments["denoise"].batch_sizes == []


def test_sample_rejects_wrong_output_shape():
    with pytest.raises(
        ValueError, match=r"denoise returned shape \(3, 4\) for an input of shape \(3, 4, 2\)"
    ):
        sample(lambda x, t, cond: x[..., 0], make_ddim(), SHAPE, None, num_inference_steps=2)


def test_sample_rejects_generator_on_other_device():
    with pytest.raises(ValueError, match="generator is on cpu but the sample is on meta"):
        sample(TinyDenoiser(), make_ddim(), SHAPE, None, device="meta", generator=torch.Generator())


# --------------------------------------------------------------------------------------------
# Docstring examples
# --------------------------------------------------------------------------------------------


def test_guidance_docstring_examples_run():
    results = doctest.testmod(ditblocks.guidance, optionflags=doctest.ELLIPSIS)

    assert results.attempted > 0
    assert results.failed == 0
