"""LoRA (Hu et al. 2021): train a low-rank update beside each chosen frozen linear layer.

    y = W x + (alpha / rank) · B A x        W frozen; A (rank × in) random, B (out × rank) zero

B starts at zero, so training begins exactly at the pretrained model. After training the update
is merged into W (`merge_lora`): the saved model has the original layout and runs at the
original speed, and nothing downstream needs to know LoRA was used.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from kefu.config import StrictModel
from kefu.errors import KefuError


class LoRAConfig(StrictModel):
    """Which linear layers get an adapter, and its size."""

    rank: int = Field(8, ge=1, description="Rank of the update B·A.")
    alpha: float = Field(16.0, gt=0, description="The update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    targets: list[str] = Field(
        default_factory=lambda: ["query", "key", "value", "dense"],
        description="Linear layers whose name ends with one of these get an adapter.",
    )


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Parameter(torch.empty(config.rank, base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, config.rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # as nn.Linear initialises itself
        self.drop = nn.Dropout(config.dropout)
        self.scale = config.alpha / config.rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (self.drop(x) @ self.down.T @ self.up.T) * self.scale

    def merged(self) -> nn.Linear:
        """The plain linear layer with the update folded into its weight."""
        with torch.no_grad():
            self.base.weight += (self.up @ self.down) * self.scale
        return self.base.requires_grad_(True)


def add_lora(model: nn.Module, config: LoRAConfig) -> int:
    """Freeze `model` and put an adapter on each targeted linear layer; returns how many."""
    model.requires_grad_(False)
    chosen = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[-1] in config.targets
    ]
    if not chosen:
        names = sorted(
            {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise KefuError(
            f"no linear layer matches the LoRA targets {config.targets}; this model has: {', '.join(names)}"
        )
    for name in chosen:
        _replace(model, name, LoRALinear(model.get_submodule(name), config))
    return len(chosen)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its linear layer, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merged())


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
