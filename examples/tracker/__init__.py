"""Reference DiffusionIntentTracker pipeline: data, model and training (not part of ditblocks)."""
