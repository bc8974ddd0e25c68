"""Sinusoidal timestep features and the DiT timestep embedder."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TimestepEmbedder", "timestep_embedding"]

Timesteps = torch.Tensor | float | int


def timestep_embedding(t: Timesteps, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Compute sinusoidal features of diffusion timesteps, following DiT.

    Frequency ``i`` is ``max_period ** (-i / half)`` for ``i`` in ``[0, half)`` with
    ``half = dim // 2``. The output contains the cosines first, then the sines, and a zero column
    is appended when ``dim`` is odd. Frequencies and features are computed in float32 whatever
    the dtype of ``t``.

    Args:
        t: Timesteps of any shape, integer or floating point, or a Python number.
        dim: Number of output features per timestep.
        max_period: Longest period of the sinusoids, in timestep units.

    Returns:
        Float32 tensor of shape ``(*t.shape, dim)``.

    Raises:
        TypeError: If ``t`` is a boolean or complex tensor, or not a number or tensor.
        ValueError: If ``dim`` or ``max_period`` is not positive.

    Examples:
        >>> import torch
        >>> from ditblocks import timestep_embedding
        >>> timestep_embedding(torch.tensor([0, 500, 999]), dim=8).shape
        torch.Size([3, 8])
        >>> timestep_embedding(torch.zeros(2, 5), dim=7)[0, 0]  # cos(0) = 1, sin(0) = 0, pad 0
        tensor([1., 1., 1., 0., 0., 0., 0.])
    """
    t = _as_timestep_tensor(t, "t")
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}.")
    if max_period <= 0:
        raise ValueError(f"max_period must be positive, got {max_period!r}.")

    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)  # (half,)
    args = t.to(torch.float32).unsqueeze(-1) * freqs  # (*t.shape, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    if dim % 2:
        padding = embedding.new_zeros(*embedding.shape[:-1], 1)
        embedding = torch.cat([embedding, padding], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """Embed diffusion timesteps into vectors: sinusoidal features, then Linear, SiLU, Linear.

    This is DiT's timestep embedder. Its output is the conditioning ``c`` that every
    adaLN-Zero block consumes.

    Args:
        hidden_size: Width of the output embedding.
        frequency_embedding_size: Number of sinusoidal features fed to the MLP.
        timestep_scale: Factor applied to the timesteps before the sinusoidal features.
            Keep 1 for discrete DDPM timesteps in ``[0, 1000)``. Set 1000 when timesteps are
            continuous in ``[0, 1]`` (flow matching, continuous-time diffusion): with
            ``max_period=10000`` the sinusoids barely change over ``[0, 1]``, so nearby noise
            levels would get almost identical embeddings.
        max_period: Longest period of the sinusoids.
        device: Device of the parameters.
        dtype: Dtype of the parameters; the output follows it.

    Shape:
        - timesteps: a Python number or 0-d tensor (broadcast to ``batch_size``), ``(B,)`` or
          ``(B, T)`` for one noise level per future step (Diffusion Forcing).
        - output: ``(B, hidden_size)`` or ``(B, T, hidden_size)``, in the dtype of the MLP's
          parameters.

    Examples:
        >>> import torch
        >>> from ditblocks import TimestepEmbedder
        >>> embedder = TimestepEmbedder(hidden_size=64)
        >>> embedder(torch.tensor([10, 999])).shape
        torch.Size([2, 64])
        >>> embedder(torch.rand(2, 16)).shape  # one noise level per step
        torch.Size([2, 16, 64])
        >>> embedder(500, batch_size=3).shape  # a scalar broadcasts to the batch
        torch.Size([3, 64])
    """

    def __init__(
        self,
        hidden_size: int,
        frequency_embedding_size: int = 256,
        timestep_scale: float = 1.0,
        max_period: float = 10000.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if hidden_size <= 0 or frequency_embedding_size <= 0:
            raise ValueError(
                "hidden_size and frequency_embedding_size must be positive, got "
                f"{hidden_size} and {frequency_embedding_size}."
            )
        self.hidden_size = hidden_size
        self.frequency_embedding_size = frequency_embedding_size
        self.timestep_scale = float(timestep_scale)
        self.max_period = float(max_period)

        factory = {"device": device, "dtype": dtype}
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, **factory),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, **factory),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the MLP as DiT does: normal weights with std 0.02, zero biases."""
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, timesteps: Timesteps, batch_size: int | None = None) -> torch.Tensor:
        """Embed ``timesteps``.

        Args:
            timesteps: A Python number, a 0-d tensor, ``(B,)`` or ``(B, T)``.
            batch_size: Batch size that a scalar timestep is broadcast to. Must match ``B``
                when ``timesteps`` has a batch dimension. A scalar without ``batch_size``
                gives a batch of one.

        Returns:
            ``(B, hidden_size)`` or ``(B, T, hidden_size)`` in the dtype of the MLP.
        """
        weight = self.mlp[0].weight
        timesteps = _as_timestep_tensor(timesteps, "timesteps", device=weight.device)
        timesteps = _broadcast_to_batch(timesteps, batch_size)

        features = timestep_embedding(
            timesteps * self.timestep_scale, self.frequency_embedding_size, self.max_period
        )
        return self.mlp(features.to(weight.dtype))

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, "
            f"frequency_embedding_size={self.frequency_embedding_size}, "
            f"timestep_scale={self.timestep_scale}"
        )


def _as_timestep_tensor(
    t: Timesteps, name: str, device: torch.device | None = None
) -> torch.Tensor:
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a number or a numeric tensor, got a bool.")
    if isinstance(t, int | float):
        return torch.tensor(t, dtype=torch.float32, device=device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or a Python number, got {type(t).__name__}."
        )
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(
            f"{name} must hold integer or floating-point timesteps, got dtype {t.dtype}. "
            "Convert it with .long() or .float()."
        )
    return t if device is None else t.to(device)


def _broadcast_to_batch(timesteps: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    if timesteps.dim() == 0:
        return timesteps.expand(1 if batch_size is None else batch_size)
    if timesteps.dim() > 2:
        raise ValueError(
            f"timesteps must have shape (), (B,) or (B, T), got {tuple(timesteps.shape)}. "
            "Pass one timestep per sample, or one per sample and future step."
        )
    if batch_size is not None and timesteps.shape[0] != batch_size:
        raise ValueError(
            f"timesteps has batch size {timesteps.shape[0]} but batch_size={batch_size}. "
            "Pass a scalar timestep to broadcast it, or one timestep per sample."
        )
    return timesteps
