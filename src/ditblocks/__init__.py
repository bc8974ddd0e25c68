"""ditblocks: DiT conditioning blocks for diffusion over point tracks and hand poses."""
