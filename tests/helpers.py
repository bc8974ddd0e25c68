"""Shared test helpers."""

import torch
from torch import nn


def perturb_modulation(model: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Give every adaLN modulation Linear random weights, as training would.

    At initialisation every gate is zero and each block is the identity, so properties such as
    causality or mask independence would hold trivially. After this call they are tested for real.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "adaLN_modulation"):
                linear = module.adaLN_modulation[-1]
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * std)
                linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator) * std)
    return model
