"""LoRA: starts at the pretrained model, trains only the adapters, merges without changing outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kefu.errors import KefuError
from kefu.models.lora import LoRAConfig, LoRALinear, add_lora, merge_lora


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))


def test_adapters_start_at_the_pretrained_model_and_only_they_train():
    model, x = toy(), torch.randn(5, 8)
    before = model(x)
    assert add_lora(model, LoRAConfig(rank=2, targets=["0", "2"])) == 2
    assert torch.equal(model(x), before)  # B starts at zero
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.down", "0.up", "2.down", "2.up"}
    # rank 2 of (16×8) and (4×16): 2·(8+16) + 2·(16+4) = 88 trainable numbers instead of 212
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 88


def test_merging_keeps_the_outputs_and_the_original_layout():
    model, x = toy(), torch.randn(5, 8)
    add_lora(model, LoRAConfig(rank=2, alpha=4, targets=["2"]))
    with torch.no_grad():
        model[2].up.normal_()
    adapted = model(x)
    by_hand = model[2].base(model[1](model[0](x))) + 2.0 * (
        model[1](model[0](x)) @ model[2].down.T @ model[2].up.T
    )
    assert torch.allclose(adapted, by_hand, atol=1e-6)  # scale = alpha / rank = 2
    merge_lora(model)
    assert isinstance(model[2], nn.Linear) and not isinstance(model[2], LoRALinear)
    assert torch.allclose(model(x), adapted, atol=1e-5)
    assert set(model.state_dict()) == set(toy().state_dict())


def test_targets_that_match_nothing_name_the_layers_there_are():
    with pytest.raises(KefuError, match="no linear layer matches the LoRA targets"):
        add_lora(toy(), LoRAConfig(targets=["query"]))
