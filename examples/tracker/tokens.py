"""Token building of the DiffusionIntentTracker: positions, appearance and trajectories.

Coordinates are continuous pixels with the origin at the top-left corner of the image, x to
the right and y down, and pixel (i, j) covering [j, j + 1) x [i, i + 1). A query point and a
ViT patch centre at the same place get the same 2D sin-cos position encoding, which lets the
cross-attention of a track row find the patches around its query point.

A trajectory row has T + 1 slots. Its token at slot k is

    position(query) + appearance(query) + row_embedding + time_embedding[k]
    + Linear(noisy normalised state at slot k)

where the state is the 2D displacement for a track and the 9D hand state (uvd displacement
and 6D rotation) for a hand. The diffusion timestep is not part of the tokens; it enters every
block as the adaLN conditioning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditblocks import timestep_embedding

__all__ = [
    "HAND_CHANNELS",
    "POSITION_SCALE",
    "TRACK_CHANNELS",
    "TrajectoryTokenizer",
    "patch_centres",
    "sample_at_points",
    "sincos_position_2d",
]

TRACK_CHANNELS = 2
HAND_CHANNELS = 9

# Normalised [0, 1] coordinates are multiplied by this before the sinusoids, so the fastest
# frequency (1 radian per unit) resolves about one pixel of a 256-pixel image.
POSITION_SCALE = 256.0


def sincos_position_2d(points: torch.Tensor, image_size: int, dim: int) -> torch.Tensor:
    """Encode pixel positions with fixed 2D sin-cos features.

    Args:
        points: (..., 2) positions (x, y) in pixels.
        image_size: Side of the square image in pixels; positions are divided by it.
        dim: Output width, a multiple of 4: the first half encodes x and the second half y.

    Returns:
        Float32 tensor of shape (..., dim).
    """
    normalised = points.float() / image_size * POSITION_SCALE
    encoding_x = timestep_embedding(normalised[..., 0], dim // 2)
    encoding_y = timestep_embedding(normalised[..., 1], dim // 2)
    return torch.cat([encoding_x, encoding_y], dim=-1)


def patch_centres(grid_size: tuple[int, int], patch_size: int, device=None) -> torch.Tensor:
    """Return the pixel centres (x, y) of a row-major patch grid, shape (rows * cols, 2)."""
    rows, cols = grid_size
    y = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) * patch_size
    x = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) * patch_size
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


def sample_at_points(feature_map: torch.Tensor, points: torch.Tensor, image_size: int):
    """Bilinearly sample a feature map at pixel positions.

    The map may have any resolution that covers the whole image, for example the image
    itself or the ViT patch grid. Outside the image the border values are repeated.

    Args:
        feature_map: (B, C, h, w).
        points: (B, N, 2) positions (x, y) in pixels of the ``image_size`` image.
        image_size: Side of the square image in pixels.

    Returns:
        (B, N, C) sampled features.
    """
    # With align_corners=False, -1 and 1 are the outer edges of the border pixels, which is
    # exactly the [0, image_size) pixel-area convention of the coordinates.
    grid = points.to(feature_map.dtype) / image_size * 2.0 - 1.0
    sampled = F.grid_sample(
        feature_map, grid.unsqueeze(2), mode="bilinear", padding_mode="border", align_corners=False
    )  # (B, C, N, 1)
    return sampled.squeeze(-1).transpose(1, 2)


class TrajectoryTokenizer(nn.Module):
    """Build the (B, N + H, T + 1, hidden) token grid of track rows followed by hand rows.

    Args:
        hidden_size: Token width.
        num_slots: T + 1.
        image_size: Side of the square image in pixels.
        appearance_dim: Width of the per-point appearance vector (0 turns appearance off).
        max_hands: Number of hand rows with their own learned identity embedding.
    """

    def __init__(
        self,
        hidden_size: int,
        num_slots: int,
        image_size: int,
        appearance_dim: int = 0,
        max_hands: int = 1,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_slots = num_slots
        self.image_size = image_size

        self.track_state = nn.Linear(TRACK_CHANNELS, hidden_size)
        self.hand_state = nn.Linear(HAND_CHANNELS, hidden_size)
        # The hand query's depth in metres; its (u, v) go through the sin-cos. The rotation is
        # left out so that a caller who knows only the hand position can still query it.
        self.hand_query = nn.Linear(1, hidden_size)
        self.appearance = nn.Linear(appearance_dim, hidden_size) if appearance_dim else None

        self.track_row = nn.Parameter(torch.zeros(1, 1, 1, hidden_size))
        self.hand_rows = nn.Parameter(torch.zeros(1, max_hands, 1, hidden_size))
        # Learned, started from the 1D sin-cos of the slot index.
        self.time_embedding = nn.Parameter(
            timestep_embedding(torch.arange(num_slots), hidden_size).view(1, 1, num_slots, -1)
        )
        nn.init.normal_(self.track_row, std=0.02)
        nn.init.normal_(self.hand_rows, std=0.02)

    def query_tokens(
        self,
        query_coords: torch.Tensor,
        appearance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the per-row part of the track tokens, (B, N, hidden).

        Args:
            query_coords: (B, N, 2) query points in pixels.
            appearance: (B, N, appearance_dim) features at the query points, or None when the
                tokenizer was built without appearance.
        """
        tokens = sincos_position_2d(query_coords, self.image_size, self.hidden_size)
        tokens = tokens.to(self.track_row.dtype) + self.track_row[:, 0]
        if self.appearance is not None:
            if appearance is None:
                raise ValueError("appearance is None but the tokenizer was built with it.")
            tokens = tokens + self.appearance(appearance)
        return tokens

    def hand_query_tokens(self, hand_query: torch.Tensor) -> torch.Tensor:
        """Return the per-row part of the hand tokens, (B, H, hidden).

        Args:
            hand_query: (B, H, 3) present hand position: u, v (pixels) and depth (metres).
        """
        num_hands = hand_query.shape[1]
        if num_hands > self.hand_rows.shape[1]:
            raise ValueError(
                f"hand_query has {num_hands} hands but the model has embeddings for "
                f"{self.hand_rows.shape[1]}; build it with max_hands >= {num_hands}."
            )
        tokens = sincos_position_2d(hand_query[..., :2], self.image_size, self.hidden_size)
        tokens = tokens.to(self.hand_query.weight.dtype) + self.hand_query(hand_query[..., 2:])
        return tokens + self.hand_rows[:, :num_hands, 0]

    def forward(
        self,
        track_rows: torch.Tensor,
        noisy_tracks: torch.Tensor,
        hand_rows: torch.Tensor | None = None,
        noisy_hands: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Combine the per-row parts with the noisy trajectories.

        Args:
            track_rows: (B, N, hidden) from ``query_tokens``.
            noisy_tracks: (B, N, T + 1, 2) noisy normalised displacements.
            hand_rows: (B, H, hidden) from ``hand_query_tokens``, or None without hands.
            noisy_hands: (B, H, T + 1, 9) noisy normalised hand states, or None.

        Returns:
            (B, N + H, T + 1, hidden) tokens, track rows first.
        """
        tokens = self.track_state(noisy_tracks) + track_rows.unsqueeze(2)
        if hand_rows is not None:
            hand_tokens = self.hand_state(noisy_hands) + hand_rows.unsqueeze(2)
            tokens = torch.cat([tokens, hand_tokens], dim=1)
        return tokens + self.time_embedding
