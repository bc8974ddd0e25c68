"""Classifier-free guidance and a sampler that drives any diffusers-style scheduler.

The sampler does not depend on tracks, text or images. It draws the initial noise, asks the
scheduler for its timesteps, calls ``denoise(x, t, cond)`` once per step (on a batch of 2B when
guidance is active, on B otherwise) and hands the guided prediction to ``scheduler.step``. The
prediction is passed through unchanged, so the scheduler's ``prediction_type`` (epsilon, sample,
v_prediction, flow velocity) decides what it means.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Condition", "classifier_free_guidance", "sample"]

logger = logging.getLogger(__name__)

Condition = Tensor | tuple | list | Mapping[str, Any] | None
"""A conditioning object: a tensor, a tuple or list of tensors, a dict of tensors, or None.

Every tensor has the batch on dim 0. Entries may also be None, which the sampler passes through.
"""


# --------------------------------------------------------------------------------------------
# Guidance formula
# --------------------------------------------------------------------------------------------


def classifier_free_guidance(
    cond: Tensor,
    uncond: Tensor,
    scale: float | Tensor,
    rescale: float = 0.0,
) -> Tensor:
    """Combine conditional and unconditional predictions with classifier-free guidance.

    The guided prediction is ``uncond + scale * (cond - uncond)`` over every channel. With
    ``rescale`` (phi) above zero, guidance rescale from Lin et al. 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed" (equations 15 and 16), is applied on top: the guided
    prediction is multiplied by ``std(cond) / std(guided)``, with the standard deviation taken per
    sample over all non-batch dims, and the result is blended as
    ``phi * rescaled + (1 - phi) * guided``. This counters the over-exposure that large scales
    cause. Where a sample's guided prediction is constant (standard deviation zero), its
    rescale factor is 1.

    Args:
        cond: Conditional prediction, shape (B, ...), floating point.
        uncond: Unconditional prediction, same shape, dtype and device as ``cond``.
        scale: Guidance scale w. A Python number or a 0-d tensor applies to every sample. A tensor
            of shape (B,) gives each sample its own scale and broadcasts over the remaining
            dims. 1 returns ``cond`` and 0 returns ``uncond``.
        rescale: Guidance rescale factor phi in [0, 1]; 0 turns rescaling off. Rescaling needs
            at least one non-batch dim.

    Returns:
        The guided prediction, same shape and dtype as ``cond``.

    Raises:
        TypeError: If ``cond``, ``uncond`` or ``scale`` has the wrong type.
        ValueError: If shapes, dtypes or devices differ, ``scale`` is not finite or not of shape
            () or (B,), or ``rescale`` is outside [0, 1].

    Examples:
        >>> import torch
        >>> from ditblocks.guidance import classifier_free_guidance
        >>> cond = torch.tensor([[1.0, 3.0]])
        >>> uncond = torch.tensor([[0.0, 1.0]])
        >>> classifier_free_guidance(cond, uncond, 2.0)
        tensor([[2., 5.]])
        >>> classifier_free_guidance(cond, uncond, torch.tensor([0.0]))
        tensor([[0., 1.]])
        >>> guided = classifier_free_guidance(cond, uncond, 4.0, rescale=1.0)
        >>> torch.allclose(guided.std(), cond.std())
        True
    """
    _check_prediction_pair(cond, uncond)
    scale_tensor = _check_scale(scale, cond.shape[0], "scale")
    _check_rescale(rescale, "rescale")
    if rescale > 0 and cond.ndim < 2:
        raise ValueError(
            f"rescale={rescale} needs a per-sample standard deviation, but cond has shape "
            f"{tuple(cond.shape)} with no dim after the batch; pass rescale=0.0 or predictions "
            "of shape (B, ...) with at least two dims"
        )

    if scale_tensor is None:
        guided = uncond + float(scale) * (cond - uncond)
    else:
        # A (B,) scale becomes (B, 1, ..., 1) so that it broadcasts over each sample.
        scale_tensor = scale_tensor.to(device=cond.device, dtype=cond.dtype)
        scale_tensor = scale_tensor.reshape(-1, *([1] * (cond.ndim - 1)))
        guided = uncond + scale_tensor * (cond - uncond)

    if rescale == 0:
        return guided

    reduce_dims = tuple(range(1, cond.ndim))
    std_cond = cond.std(dim=reduce_dims, keepdim=True, correction=0)
    std_guided = guided.std(dim=reduce_dims, keepdim=True, correction=0)
    safe_std_guided = torch.where(std_guided > 0, std_guided, torch.ones_like(std_guided))
    factor = torch.where(std_guided > 0, std_cond / safe_std_guided, torch.ones_like(std_guided))
    rescaled = guided * factor
    return rescale * rescaled + (1.0 - rescale) * guided


def _check_prediction_pair(cond: Any, uncond: Any) -> None:
    for name, value in (("cond", cond), ("uncond", uncond)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor, got dtype {value.dtype}; "
                f"cast it with {name}.float()"
            )
    if cond.shape != uncond.shape:
        raise ValueError(
            f"cond and uncond must have the same shape, got {tuple(cond.shape)} and "
            f"{tuple(uncond.shape)}"
        )
    if cond.dtype != uncond.dtype or cond.device != uncond.device:
        raise ValueError(
            f"cond and uncond must share dtype and device, got {cond.dtype} on {cond.device} "
            f"and {uncond.dtype} on {uncond.device}; move one with .to(other)"
        )
    if cond.ndim == 0:
        raise ValueError("cond and uncond must have a batch dim, got 0-d tensors")


def _check_scale(scale: Any, batch_size: int, name: str) -> Tensor | None:
    """Validate a guidance scale and return it as a tensor, or None when it is a plain number."""
    if isinstance(scale, bool) or not isinstance(scale, (numbers.Real, Tensor)):
        raise TypeError(
            f"{name} must be a float or a tensor of shape ({batch_size},), "
            f"got {type(scale).__name__}"
        )

    if isinstance(scale, numbers.Real):
        if not math.isfinite(scale):
            raise ValueError(f"{name} must be finite, got {scale}")
        return None

    if scale.ndim == 0:
        scale = scale.reshape(1)
    if scale.shape not in ((1,), (batch_size,)):
        raise ValueError(
            f"{name} must be a number, a 0-d tensor or a tensor of shape ({batch_size},) "
            f"(one scale per sample), got shape {tuple(scale.shape)}"
        )
    if scale.is_complex() or not torch.isfinite(scale).all():
        raise ValueError(f"{name} must contain finite real values, got {scale.tolist()}")
    return scale


def _check_rescale(rescale: Any, name: str) -> None:
    if isinstance(rescale, bool) or not isinstance(rescale, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(rescale).__name__}")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(
            f"{name} must be in [0, 1] (0 turns guidance rescale off; Lin et al. 2024 "
            f"use 0.7), got {rescale}"
        )


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sample(
    denoise: Callable[[Tensor, Tensor, Condition], Tensor],
    scheduler: Any,
    shape: Sequence[int],
    cond: Condition,
    uncond: Condition = None,
    guidance_scale: float | Tensor = 1.0,
    num_inference_steps: int = 20,
    known: Tensor | None = None,
    known_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_intermediates: bool = False,
    guidance_rescale: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    step_kwargs: Mapping[str, Any] | None = None,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Draw samples by running a diffusers-style scheduler with classifier-free guidance.

    The initial sample is Gaussian noise drawn with ``generator`` and multiplied by
    ``scheduler.init_noise_sigma``. At each timestep the sampler pins known values, applies
    ``scheduler.scale_model_input``, calls ``denoise`` and passes the (guided) prediction to
    ``scheduler.step(prediction, t, x).prev_sample``. The prediction is never converted: it must
    already be in the scheduler's ``prediction_type``.

    Guidance is active when ``uncond`` is given and ``guidance_scale`` is not 1 (a per-sample
    tensor counts as 1 only when all its entries are 1). Then each step makes one call on a
    batch of 2B: rows 0..B-1 carry ``cond`` and rows B..2B-1 carry ``uncond``, so sample i is
    guided by row B+i. Otherwise each step makes one call on a batch of B with ``cond``. Guidance
    applies to every channel of the prediction.

    Conditions may be a tensor, a tuple or list of tensors, or a dict of tensors, each with
    the batch on dim 0, and ``uncond`` must have the same structure as ``cond``. Where the two
    differ in dim 1 (token count), the shorter one is padded at the end of dim 1: boolean
    tensors (key-padding masks, True = attend) with False, other tensors with zeros. Pass a
    mask with the tokens so that the model ignores the padding; without one, a warning is
    logged.

    Known-value pinning: where ``known_mask`` is True the sample is set to ``known`` before
    every model call and after every step, so those entries equal ``known`` exactly in the
    result and in every intermediate. The values are pinned as given, not noised to the current
    noise level, which matches a model trained with the same entries pinned to clean values.

    Note:
        Timestep spacing. Use ``timestep_spacing="trailing"`` with DDIM (the diffusers 0.42
        default is "leading"). The sampler starts from pure noise, which matches the training
        distribution only at the noisiest timestep. "leading" never starts there: 20 of 1000
        steps start at t=950, 7 steps at t=852, and 1 step runs the model only at t=0, where
        it reads the noise as an almost clean sample. "trailing" always starts at t=999, as
        Lin et al. 2024 recommend. One caveat in diffusers 0.42: DDIM takes the previous
        timestep as ``t - num_train_timesteps // num_inference_steps``. With "trailing", some
        step counts (7, 11 or 24 of 1000, for example) therefore end at timestep 0 instead of
        the clean sample. They leave noise of standard deviation
        ``sqrt(1 - alphas_cumprod[0])``, which is 0.01 with the default betas. Counts such as
        10, 20, 25, 50 and 100 end cleanly.
        DPMSolverMultistepScheduler and EulerDiscreteScheduler default to "linspace", which
        also starts at the last training timestep. DDIM's default ``clip_sample=True`` clips
        predicted clean samples to [-1, 1], so turn it off for data outside that range.

    Args:
        denoise: Any callable ``denoise(x, t, cond) -> prediction``. ``x`` has shape
            (B', *shape[1:]) where B' is B or 2B, ``t`` is a (B',) tensor of the scheduler's
            timestep (its dtype, for example int64 for DDIM and float32 for flow matching), and
            the returned prediction has the shape of ``x``.
        scheduler: A diffusers scheduler, or any object with ``set_timesteps(n)``,
            ``timesteps`` and ``step(prediction, t, x)`` returning an object with
            ``prev_sample``. ``scale_model_input`` is used when present (identity otherwise)
            and ``init_noise_sigma`` likewise (1.0 otherwise, as for
            FlowMatchEulerDiscreteScheduler). Its state is reset by ``set_timesteps``, so one
            scheduler can serve many calls but not two at once.
        shape: Shape of the sample (B, ...), positive ints.
        cond: Conditioning for the conditional pass (see above), or None.
        uncond: Conditioning for the unconditional pass, same structure as ``cond``, or None
            to sample without guidance.
        guidance_scale: Guidance scale, a number or a tensor (B,) of per-sample scales.
        num_inference_steps: Number of scheduler steps, a positive int.
        known: Values to pin, broadcastable to ``shape``. Required with ``known_mask``.
        known_mask: Boolean tensor broadcastable to ``shape``; True marks pinned entries.
        generator: ``torch.Generator`` for the initial noise and for stochastic scheduler steps
            (it is passed to ``scheduler.step`` when ``step`` accepts ``generator``). Its device
            must match ``device``.
        return_intermediates: Also return the sample after every step.
        guidance_rescale: Guidance rescale factor phi in [0, 1]; see
            [`classifier_free_guidance`][ditblocks.classifier_free_guidance].
        device: Device of the sample. Default: the device of the first tensor in ``cond``,
            else of ``known``, else the CPU.
        dtype: Floating dtype of the sample. Default: ``torch.get_default_dtype()``. The model's
            prediction is cast to it before guidance.
        step_kwargs: Extra keyword arguments for ``scheduler.step``, for example
            ``{"eta": 1.0}`` for stochastic DDIM.

    Returns:
        The final sample of shape ``shape``. With ``return_intermediates``, a tuple of the final
        sample and the list of samples after each step (the last one is the final sample).

    Raises:
        TypeError: If an argument has the wrong type, for example a scheduler without
            ``set_timesteps``, a non-callable ``denoise`` or a non-boolean ``known_mask``.
        ValueError: If an argument has an invalid value or shape, for example
            ``num_inference_steps <= 0``, a condition whose batch is not ``shape[0]``, a
            ``known`` that does not broadcast to ``shape``, or a model output of the wrong
            shape (checked after each call).

    Examples:
        Recover a fixed clean sample with an oracle that returns the exact noise:

        >>> import torch
        >>> from diffusers import DDIMScheduler
        >>> from ditblocks.guidance import sample
        >>> scheduler = DDIMScheduler(timestep_spacing="trailing", clip_sample=False)
        >>> alphas = scheduler.alphas_cumprod
        >>> target = torch.tensor([[1.5, -2.0, 0.25]])
        >>> def oracle(x, t, cond):
        ...     a = alphas[t].view(-1, 1)
        ...     return (x - a.sqrt() * cond) / (1 - a).sqrt()
        >>> x = sample(oracle, scheduler, (1, 3), target, num_inference_steps=10,
        ...            generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(x, target, atol=1e-4)
        True

        Guidance batches both passes into one call of size 2B:

        >>> batch_sizes = []
        >>> x = sample(lambda x, t, c: batch_sizes.append(len(x)) or 0.1 * x + c,
        ...            scheduler, (4, 3), torch.ones(4, 3), uncond=torch.zeros(4, 3),
        ...            guidance_scale=2.0, num_inference_steps=5)
        >>> batch_sizes
        [8, 8, 8, 8, 8]
    """
    # Validate everything before any compute.
    _check_scheduler(scheduler)
    if not callable(denoise):
        raise TypeError(
            f"denoise must be callable as denoise(x, t, cond), got {type(denoise).__name__}"
        )
    shape = _check_shape(shape)
    batch_size = shape[0]
    _check_num_inference_steps(num_inference_steps)
    cond = _check_condition(cond, "cond", batch_size)
    if uncond is not None:
        uncond = _check_condition(uncond, "uncond", batch_size)
        _check_same_structure(cond, uncond)
    scale_tensor = _check_scale(guidance_scale, batch_size, "guidance_scale")
    _check_rescale(guidance_rescale, "guidance_rescale")
    if not isinstance(return_intermediates, bool):
        raise TypeError(
            f"return_intermediates must be a bool, got {type(return_intermediates).__name__}"
        )
    device = _resolve_device(device, cond, known)
    dtype = _resolve_dtype(dtype)
    _check_generator(generator, device)
    known, known_mask = _check_known(known, known_mask, shape, device, dtype)
    step_kwargs = _check_step_kwargs(scheduler, step_kwargs, generator)

    guided = uncond is not None and _guidance_is_active(guidance_scale, scale_tensor)
    model_cond = _concat_conditions(cond, uncond) if guided else cond
    model_cond = _move_condition(model_cond, device)
    model_batch = 2 * batch_size if guided else batch_size

    _set_timesteps(scheduler, num_inference_steps, device)
    timesteps = scheduler.timesteps
    if len(timesteps) == 0:
        raise ValueError(
            f"{type(scheduler).__name__}.set_timesteps({num_inference_steps}) produced no "
            "timesteps; check the scheduler's configuration"
        )
    logger.debug(
        "Sampling %d steps of %s, shape %s, guidance %s",
        len(timesteps),
        type(scheduler).__name__,
        shape,
        "on (batch 2B)" if guided else "off (batch B)",
    )

    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    x = _pin(x, known, known_mask)
    intermediates: list[Tensor] = []

    for t in timesteps:
        x = _pin(x, known, known_mask)
        model_input = x
        if hasattr(scheduler, "scale_model_input"):
            model_input = scheduler.scale_model_input(x, t)
        t_batch = torch.as_tensor(t, device=device).reshape(1).repeat(model_batch)

        if guided:
            output = _call_denoise(
                denoise,
                torch.cat([model_input, model_input]),
                t_batch,
                model_cond,
                (model_batch, *shape[1:]),
                dtype,
            )
            cond_output, uncond_output = output.chunk(2)
            scale = guidance_scale if scale_tensor is None else scale_tensor
            prediction = classifier_free_guidance(
                cond_output, uncond_output, scale, rescale=guidance_rescale
            )
        else:
            prediction = _call_denoise(denoise, model_input, t_batch, model_cond, shape, dtype)

        x = scheduler.step(prediction, t, x, **step_kwargs).prev_sample
        x = _pin(x, known, known_mask)
        if return_intermediates:
            intermediates.append(x)

    if return_intermediates:
        return x, intermediates
    return x


def _call_denoise(
    denoise: Callable[..., Any],
    x: Tensor,
    t: Tensor,
    cond: Condition,
    expected_shape: tuple[int, ...],
    dtype: torch.dtype,
) -> Tensor:
    output = denoise(x, t, cond)
    if not isinstance(output, Tensor):
        raise TypeError(f"denoise must return a torch.Tensor, got {type(output).__name__}")
    if tuple(output.shape) != expected_shape:
        raise ValueError(
            f"denoise returned shape {tuple(output.shape)} for an input of shape "
            f"{expected_shape}; it must return a prediction of the input's shape"
        )
    return output.to(dtype)


def _pin(x: Tensor, known: Tensor | None, known_mask: Tensor | None) -> Tensor:
    if known_mask is None:
        return x
    return torch.where(known_mask, known, x)


def _guidance_is_active(scale: float | Tensor, scale_tensor: Tensor | None) -> bool:
    if scale_tensor is None:
        return float(scale) != 1.0
    return bool((scale_tensor != 1).any())


# --------------------------------------------------------------------------------------------
# Conditions: validation, pairing and padding
# --------------------------------------------------------------------------------------------


def _condition_items(cond: Condition) -> list[tuple[str, Tensor | None]]:
    """Return (name, tensor) pairs for the entries of a condition, named for error messages."""
    if isinstance(cond, Mapping):
        return [(f"[{key!r}]", value) for key, value in cond.items()]
    if isinstance(cond, (tuple, list)):
        return [(f"[{index}]", value) for index, value in enumerate(cond)]
    return [("", cond)]


def _check_condition(cond: Any, name: str, batch_size: int) -> Condition:
    if cond is not None and not isinstance(cond, (Tensor, tuple, list, Mapping)):
        raise TypeError(
            f"{name} must be a tensor, a tuple or list of tensors, a dict of tensors or None, "
            f"got {type(cond).__name__}"
        )

    for suffix, value in _condition_items(cond):
        if value is None:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{name}{suffix} must be a tensor or None, got {type(value).__name__}; "
                "nested containers are not supported"
            )
        if value.ndim == 0 or value.shape[0] != batch_size:
            raise ValueError(
                f"{name}{suffix} has shape {tuple(value.shape)}, but its batch dim 0 must "
                f"equal shape[0]={batch_size}; give every condition tensor one row per sample"
            )
    return cond


def _check_same_structure(cond: Condition, uncond: Condition) -> None:
    if cond is None:
        raise ValueError("uncond was given but cond is None; pass both or neither")
    if type(cond) is not type(uncond) and not (
        isinstance(cond, Mapping) and isinstance(uncond, Mapping)
    ):
        raise TypeError(
            f"cond and uncond must have the same structure, got {type(cond).__name__} and "
            f"{type(uncond).__name__}"
        )
    if isinstance(cond, Mapping) and set(cond) != set(uncond):
        raise ValueError(
            f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}"
        )
    if isinstance(cond, (tuple, list)) and len(cond) != len(uncond):
        raise ValueError(
            f"cond and uncond must have the same length, got {len(cond)} and {len(uncond)}"
        )

    for (suffix, c), (_, u) in zip(_condition_items(cond), _pair_items(cond, uncond), strict=True):
        if (c is None) != (u is None):
            raise ValueError(
                f"cond{suffix} and uncond{suffix} must both be tensors or both be None"
            )
        if c is None:
            continue
        if c.dtype != u.dtype:
            raise ValueError(
                f"cond{suffix} and uncond{suffix} must share a dtype, got {c.dtype} and {u.dtype}"
            )
        if c.ndim != u.ndim or (c.ndim > 1 and c.shape[2:] != u.shape[2:]):
            raise ValueError(
                f"cond{suffix} and uncond{suffix} may differ only in dim 1 (token count), got "
                f"shapes {tuple(c.shape)} and {tuple(u.shape)}"
            )
        if c.ndim == 1 and c.shape != u.shape:
            raise ValueError(
                f"cond{suffix} and uncond{suffix} must have the same shape, got "
                f"{tuple(c.shape)} and {tuple(u.shape)}"
            )


def _pair_items(cond: Condition, uncond: Condition) -> list[tuple[str, Tensor | None]]:
    """Return uncond's entries in the order of cond's (dict key order may differ)."""
    if isinstance(cond, Mapping):
        return [(f"[{key!r}]", uncond[key]) for key in cond]
    return _condition_items(uncond)


def _concat_conditions(cond: Condition, uncond: Condition) -> Condition:
    """Stack cond over uncond along the batch, padding dim 1 to a common length."""
    if isinstance(cond, Mapping):
        merged = {key: _concat_pair(cond[key], uncond[key]) for key in cond}
        padded = {key: value for key, value in merged.items() if value[1]}
        _warn_unmasked_padding(padded.keys(), merged.values())
        return {key: value[0] for key, value in merged.items()}
    if isinstance(cond, (tuple, list)):
        merged_list = [_concat_pair(c, u) for c, u in zip(cond, uncond, strict=True)]
        padded_names = [f"[{i}]" for i, value in enumerate(merged_list) if value[1]]
        _warn_unmasked_padding(padded_names, merged_list)
        return type(cond)(value[0] for value in merged_list)

    merged_tensor, was_padded = _concat_pair(cond, uncond)
    _warn_unmasked_padding(["cond"] if was_padded else [], [(merged_tensor, was_padded)])
    return merged_tensor


def _concat_pair(cond: Tensor | None, uncond: Tensor | None) -> tuple[Tensor | None, bool]:
    if cond is None:
        return None, False
    uncond = uncond.to(cond.device)
    if cond.ndim < 2 or cond.shape[1] == uncond.shape[1]:
        return torch.cat([cond, uncond]), False

    length = max(cond.shape[1], uncond.shape[1])
    return torch.cat([_pad_dim1(cond, length), _pad_dim1(uncond, length)]), True


def _pad_dim1(tensor: Tensor, length: int) -> Tensor:
    """Pad dim 1 at its end with False (bool) or zeros (other dtypes)."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    padding = torch.zeros(
        (tensor.shape[0], missing, *tensor.shape[2:]), dtype=tensor.dtype, device=tensor.device
    )
    return torch.cat([tensor, padding], dim=1)


def _warn_unmasked_padding(padded_names: Any, merged: Any) -> None:
    padded_names = list(padded_names)
    if not padded_names:
        return
    has_mask = any(
        value is not None and value.dtype == torch.bool and was_padded
        for value, was_padded in merged
    )
    if not has_mask:
        logger.warning(
            "Padded condition entries %s to a common token count without a boolean "
            "key-padding mask; the model will attend to the zero padding tokens. Pass a "
            "(B, L) bool mask beside the tokens to mask them.",
            ", ".join(padded_names),
        )


def _move_condition(cond: Condition, device: torch.device) -> Condition:
    if isinstance(cond, Tensor):
        return cond.to(device)
    if isinstance(cond, Mapping):
        return {key: None if v is None else v.to(device) for key, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(None if v is None else v.to(device) for v in cond)
    return cond


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_scheduler(scheduler: Any) -> None:
    for method in ("set_timesteps", "step"):
        if not callable(getattr(scheduler, method, None)):
            raise TypeError(
                f"scheduler must have a callable {method}() like a diffusers scheduler "
                f"(e.g. diffusers.DDIMScheduler), got {type(scheduler).__name__} without it"
            )


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple of ints (B, ...), got {type(shape).__name__}")
    valid = len(shape) > 0 and all(
        isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape
    )
    if not valid:
        raise ValueError(
            f"shape must be a non-empty tuple of positive ints (B, ...), got {tuple(shape)}"
        )
    return tuple(shape)


def _check_num_inference_steps(num_inference_steps: Any) -> None:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise TypeError(
            f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}"
        )
    if num_inference_steps <= 0:
        raise ValueError(
            f"num_inference_steps must be a positive int, got {num_inference_steps}; "
            "use for example 20 to 50 for DDIM"
        )


def _resolve_device(
    device: torch.device | str | None, cond: Condition, known: Tensor | None
) -> torch.device:
    if device is not None:
        return torch.device(device)
    for _, value in _condition_items(cond):
        if isinstance(value, Tensor):
            return value.device
    if isinstance(known, Tensor):
        return known.device
    return torch.device("cpu")


def _resolve_dtype(dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype}")
    return dtype


def _check_generator(generator: Any, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the sample is on {device}; create it "
            f"with torch.Generator(device={device.type!r})"
        )


def _check_known(
    known: Any,
    known_mask: Any,
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor | None, Tensor | None]:
    if known is None and known_mask is None:
        return None, None
    if known is None or known_mask is None:
        missing = "known" if known is None else "known_mask"
        raise ValueError(f"known and known_mask must be given together, {missing} is missing")

    for name, value in (("known", known), ("known_mask", known_mask)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if known_mask.dtype != torch.bool:
        raise TypeError(
            f"known_mask must be a bool tensor (True = pinned), got dtype {known_mask.dtype}; "
            "convert it with known_mask.bool() or known_mask > 0"
        )
    if not known.is_floating_point():
        raise TypeError(f"known must be a floating-point tensor, got dtype {known.dtype}")

    for name, value in (("known", known), ("known_mask", known_mask)):
        try:
            broadcast = torch.broadcast_shapes(value.shape, shape)
        except RuntimeError:
            broadcast = None
        if broadcast != shape:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}, which does not broadcast to the "
                f"sample shape {shape}; give it shape {shape} or a broadcastable one"
            )
    return known.to(device=device, dtype=dtype), known_mask.to(device)


def _set_timesteps(scheduler: Any, num_inference_steps: int, device: torch.device) -> None:
    if _accepts_keyword(scheduler.set_timesteps, "device"):
        scheduler.set_timesteps(num_inference_steps, device=device)
    else:
        scheduler.set_timesteps(num_inference_steps)


def _check_step_kwargs(
    scheduler: Any, step_kwargs: Mapping[str, Any] | None, generator: torch.Generator | None
) -> dict[str, Any]:
    step_kwargs = dict(step_kwargs or {})
    reserved = {"model_output", "timestep", "sample", "return_dict"} & set(step_kwargs)
    if reserved:
        raise ValueError(
            f"step_kwargs must not set {sorted(reserved)}; the sampler passes them itself"
        )
    for key in step_kwargs:
        if not _accepts_keyword(scheduler.step, key):
            raise ValueError(
                f"step_kwargs has {key!r}, which {type(scheduler).__name__}.step does not accept"
            )
    wants_generator = generator is not None and "generator" not in step_kwargs
    if wants_generator and _accepts_keyword(scheduler.step, "generator"):
        step_kwargs["generator"] = generator
    return step_kwargs


def _accepts_keyword(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    if name in parameters:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
