"""Input checks shared by the public modules, run before any compute."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(
    value: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    last_dim: int | None = None,
    layout: str = "",
) -> None:
    """Raise if ``value`` is not a floating-point tensor of the expected rank and width."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {value.dtype}. "
            f"Convert it with .float() or the model's dtype."
        )

    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim or ())
    if allowed and value.dim() not in allowed:
        raise ValueError(
            f"{name} must have shape {layout}, got {tuple(value.shape)} "
            f"({value.dim()} dimensions instead of {' or '.join(map(str, allowed))})."
        )
    if last_dim is not None and value.shape[-1] != last_dim:
        raise ValueError(
            f"{name} must have {last_dim} channels in its last dimension {layout}, got "
            f"{value.shape[-1]} (shape {tuple(value.shape)}). Project it to {last_dim} "
            "channels or build the module with a matching width."
        )


def check_bool_mask(
    mask: object, name: str, shapes: Sequence[tuple[int, ...]], layout: str
) -> None:
    """Raise if ``mask`` is not a boolean tensor of one of the given shapes."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor, got {type(mask).__name__}.")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor where True means attend, got dtype {mask.dtype}. "
            f"Convert a 0/1 mask with .bool(); an additive float mask m becomes m == 0."
        )
    if tuple(mask.shape) not in {tuple(shape) for shape in shapes}:
        expected = " or ".join(str(tuple(shape)) for shape in shapes)
        raise ValueError(f"{name} must have shape {layout} = {expected}, got {tuple(mask.shape)}.")
