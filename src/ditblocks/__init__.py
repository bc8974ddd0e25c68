"""ditblocks: Diffusion Transformer (DiT) conditioning blocks for diffusion over trajectories.

The public API: timestep embedding, attention with boolean masks, adaLN-Zero blocks, the
factorized space-time DiTUpdateFormer, the text conditioner and the classifier-free guidance
sampler. ``TextConditioner`` needs the ``text`` extra only when it is built.
"""

from ditblocks.attention import Attention, Mlp
from ditblocks.blocks import DiTAttnBlock, DiTCrossAttnBlock, modulate
from ditblocks.embeddings import TimestepEmbedder, timestep_embedding
from ditblocks.guidance import classifier_free_guidance, sample
from ditblocks.text import UMT5_SIZES, TextConditioner
from ditblocks.updateformer import DiTUpdateFormer

__version__ = "0.1.0.dev0"

__all__ = [
    "UMT5_SIZES",
    "Attention",
    "DiTAttnBlock",
    "DiTCrossAttnBlock",
    "DiTUpdateFormer",
    "Mlp",
    "TextConditioner",
    "TimestepEmbedder",
    "classifier_free_guidance",
    "modulate",
    "sample",
    "timestep_embedding",
]
