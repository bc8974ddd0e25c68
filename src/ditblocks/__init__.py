"""ditblocks: Diffusion Transformer (DiT) conditioning blocks for diffusion over trajectories.

The public API: timestep embedding, attention with boolean masks, adaLN-Zero blocks and the
factorized space-time DiTUpdateFormer.
"""

from ditblocks.attention import Attention, Mlp
from ditblocks.blocks import DiTAttnBlock, DiTCrossAttnBlock, modulate
from ditblocks.embeddings import TimestepEmbedder, timestep_embedding
from ditblocks.updateformer import DiTUpdateFormer

__version__ = "0.1.0.dev0"

__all__ = [
    "Attention",
    "DiTAttnBlock",
    "DiTCrossAttnBlock",
    "DiTUpdateFormer",
    "Mlp",
    "TimestepEmbedder",
    "modulate",
    "timestep_embedding",
]
