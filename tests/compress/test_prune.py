"""`kefu compress prune`: exact magnitude sparsity, structured pruning parity, the pruned run
loading, exporting and generating, recovery, and the command as a user runs it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from transformers import AutoModelForCausalLM

from kefu.compress.prune import (
    check_sparsity,
    head_importance,
    kept_units,
    magnitude_prune,
    prunable_matrices,
    prune_run,
    structured_prune,
    zero_share,
)
from kefu.config import validate
from kefu.errors import KefuError
from kefu.infer.engine import GenerationEngine
from kefu.infer.generate import SamplingConfig, generate
from kefu.models.checkpoint import load_run
from kefu.models.gpt import GPT, GPTConfig
from kefu.models.hf_export import export_hf
from kefu.models.lstm import LSTMConfig, RecurrentLM
from kefu.train.recipe import TrainRecipe
from kefu.train.run import run_training
from tests.conftest import kefu, write_chats


def random_gpt(n_kv_head: int | None, tie: bool = True) -> GPT:
    """A GPT with large random weights and norm gains, so every misplaced row changes logits."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=60,
        context_length=32,
        n_layer=2,
        n_head=4,
        n_kv_head=n_kv_head,
        d_model=32,
        tie_embeddings=tie,
    )
    model = GPT(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
            else:
                nn.init.normal_(parameter, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_chats(tmp_path_factory.mktemp("chats"))


@pytest.fixture(scope="module")
def source_run(data, tmp_path_factory) -> Path:
    """A briefly trained chat GPT with grouped-query attention (4 query heads, 2 key/value)."""
    recipe = {
        "kind": "train",
        "task": "chat",
        "arch": "gpt",
        "data": str(data),
        "gpt": {"context_length": 48, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 32},
        "tokenizer_vocab_size": 400,
        "train": {
            "max_steps": 20,
            "batch_size": 8,
            "warmup_steps": 2,
            "eval_every": 10,
            "eval_batches": 2,
            "lr": 0.01,
        },
    }
    run = tmp_path_factory.mktemp("source") / "run"
    run_training(validate(TrainRecipe, recipe, "test", "train recipe"), run)
    return run


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_magnitude_zeroes_exactly_the_smallest_share_of_each_matrix(arch):
    torch.manual_seed(0)
    model = (
        random_gpt(2, tie=False)
        if arch == "gpt"
        else RecurrentLM(LSTMConfig(vocab_size=60, n_layer=2, d_embed=16, d_hidden=24))
    )
    original = {name: value.clone() for name, value in model.state_dict().items()}
    pruned = magnitude_prune(model, 0.3)
    matrices = prunable_matrices(model)
    expected = {
        "gpt": {f"blocks.{i}.{m}.weight" for i in (0, 1) for m in ("attention.qkv", "attention.out", "mlp.gate_up", "mlp.down")},
        "lstm": {f"rnn.weight_{kind}_l{i}" for kind in ("ih", "hh") for i in (0, 1)} | {"project.weight"},
    }[arch]  # fmt: skip
    assert set(matrices) == set(pruned.masks) == expected
    for name, weight in matrices.items():
        removed = weight == 0
        assert int(removed.sum()) == math.floor(0.3 * weight.numel() + 0.5)  # per matrix, exactly
        before = original[name].abs()
        assert before[~removed].min() >= before[removed].max()  # the largest weights survive
        assert torch.equal(weight[~removed], original[name][~removed])
    for name, value in model.state_dict().items():
        if name not in matrices:  # embedding, norms, biases, the output layer
            assert torch.equal(value, original[name]), name
    assert zero_share(model) == pytest.approx(0.3, abs=1e-3)


# (n_kv_head, sparsity) → (n_head, n_kv_head) after pruning 4 query heads. Without grouping
# whole heads go; with it, the same number of query heads in each group and no key/value head.
HEADS_AFTER = {
    (None, 0.25): (3, 3),
    (None, 0.5): (2, 2),
    (2, 0.25): (2, 2),  # 2 per group: 0.25 · 2 rounds to one of them
    (2, 0.5): (2, 2),
    (1, 0.25): (3, 1),
    (1, 0.5): (2, 1),
}


@pytest.mark.parametrize("n_kv_head", [None, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_structured_pruning_matches_the_original_with_the_removed_units_zeroed(n_kv_head, sparsity):
    model = random_gpt(n_kv_head)
    c = model.config
    kept = kept_units(model, sparsity)
    smaller = structured_prune(model, sparsity).model

    # The original, with the output columns of removed heads and the down-projection columns
    # of removed channels zeroed: what is left must be exactly the smaller model.
    masked = GPT(c).eval()
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block, (query, _, channels) in zip(masked.blocks, kept, strict=True):
            gone = torch.ones(c.n_head, dtype=torch.bool)
            gone[query] = False
            block.attention.out.weight.view(c.d_model, c.n_head, c.head_dim)[:, gone] = 0
            gone = torch.ones(c.hidden, dtype=torch.bool)
            gone[channels] = False
            block.mlp.down.weight[:, gone] = 0
    ids = torch.randint(0, c.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = masked(ids), smaller(ids)
        assert not torch.allclose(model(ids), expected, atol=1e-2)  # something was removed
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    assert (smaller.config.n_head, smaller.config.kv_heads) == HEADS_AFTER[n_kv_head, sparsity]
    assert smaller.config.hidden == {0.25: 96, 0.5: 64}[sparsity]  # of 128 channels
    assert smaller.config.head_dim == c.head_dim == smaller.config.d_head
    assert smaller.num_parameters() < model.num_parameters()
    # The kept heads are the most important of their layer (of their group, with grouping).
    group = c.n_head // c.kv_heads
    for block, (query, _, _) in zip(model.blocks, kept, strict=True):
        scores = head_importance(block, c).view(c.kv_heads, group)
        keep = torch.zeros(c.n_head, dtype=torch.bool)
        keep[query] = True
        keep = keep.view(c.kv_heads, group)
        if group == 1:
            scores, keep = scores.view(1, -1), keep.view(1, -1)
        for row, chosen in zip(scores, keep, strict=True):
            assert row[chosen].min() >= row[~chosen].max()


def test_head_width_is_explicit_when_heads_do_not_fill_d_model():
    assert GPTConfig(d_model=32, n_head=4).head_dim == 8  # configs without d_head: as before
    assert GPTConfig(d_model=32, n_head=3, d_head=8).head_dim == 8
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(d_model=32, n_head=3)
    with pytest.raises(ValueError, match="even"):
        GPTConfig(d_model=32, n_head=3, d_head=7)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_zero_one_is_a_clear_error(sparsity, tmp_path):
    with pytest.raises(KefuError, match=r"outside the allowed range: .* strictly between 0 and 1"):
        check_sparsity(sparsity)
    with pytest.raises(KefuError, match="strictly between 0 and 1"):
        prune_run(tmp_path / "no-run", tmp_path / "out", "magnitude", sparsity)
    assert not (tmp_path / "out").exists()


def test_unknown_method_and_structured_lstm_are_clear_errors(tmp_path):
    with pytest.raises(KefuError, match="unknown pruning method 'random'; valid methods: magnitude, structured"):  # fmt: skip
        prune_run(tmp_path, tmp_path / "out", "random", 0.5)
    lstm = RecurrentLM(LSTMConfig(vocab_size=60, n_layer=1, d_embed=16, d_hidden=16))
    with pytest.raises(KefuError, match="use --method magnitude"):
        structured_prune(lstm, 0.5)


def test_bad_options_fail_before_anything_is_written(source_run, tmp_path):
    out = tmp_path / "out"
    quantized = tmp_path / "quantized"
    shutil.copytree(source_run, quantized)
    config = yaml.safe_load((quantized / "config.yaml").read_text())
    (quantized / "config.yaml").write_text(yaml.safe_dump(config | {"quantized": {}}))
    with pytest.raises(KefuError, match="is quantized; prune the run it was quantized from"):
        prune_run(quantized, out, "magnitude", 0.5)
    with pytest.raises(KefuError, match=r"recovery options: .*lr: Input should be greater than 0"):
        prune_run(source_run, out, "structured", 0.5, recover_steps=2, lr=-1.0)
    with pytest.raises(KefuError, match="does not exist; give --data"):
        prune_run(source_run, out, "structured", 0.5, recover_steps=2, data=tmp_path / "none")
    assert not out.exists()


def test_structured_run_loads_exports_and_generates(source_run, tmp_path):
    source = load_run(source_run)
    summary = prune_run(source_run, tmp_path / "pruned", "structured", 0.5)
    run = load_run(tmp_path / "pruned")  # the loader every command uses, unchanged

    config = yaml.safe_load((tmp_path / "pruned" / "config.yaml").read_text())
    assert config["source_run"] == str(source_run.resolve())
    pruning = config["compression"]["pruning"]
    assert pruning["method"] == "structured" and pruning["sparsity"] == 0.5
    assert pruning["n_head"] == [4, 2] and pruning["n_kv_head"] == [2, 2]
    assert config["model"]["n_head"] == 2 and config["model"]["d_head"] == 8
    assert summary.after.size_bytes < 0.75 * summary.before.size_bytes
    assert summary.after.parameters == run.model.num_parameters() < source.model.num_parameters()

    ids = torch.tensor([source.tokenizer.encode("Where is my card number 7?")])
    with torch.no_grad():
        expected = structured_prune(source.model, 0.5).model(ids)
        torch.testing.assert_close(run.model(ids), expected, atol=1e-6, rtol=0)

        # The Hugging Face export takes the explicit head width (n_head · d_head != d_model).
        hf = AutoModelForCausalLM.from_pretrained(export_hf(run.path, tmp_path / "hf")).eval()
        assert hf.config.head_dim == 8 and hf.config.num_attention_heads == 2
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-5, rtol=1e-4)

    # Greedy generation, one batch and the continuous-batching engine, give the same replies.
    prompts = [
        run.tokenizer.render([{"role": "user", "content": m}], add_generation_prompt=True).ids
        for m in ("Where is my card number 3?", "thanks")
    ]
    sampling = SamplingConfig(max_new_tokens=8)
    batch = [g.text for g in generate(run.model, run.tokenizer, prompts, sampling)]
    engine = GenerationEngine(run.model, run.tokenizer, max_batch=2)
    streams = [engine.stream(p, sampling) for p in prompts]
    assert ["".join(s) for s in streams] == batch


def test_recovery_lowers_validation_loss_and_keeps_magnitude_zeros(source_run, data, tmp_path):
    summary = prune_run(
        source_run, tmp_path / "pruned", "magnitude", 0.7, recover_steps=12, data=data, lr=0.01
    )
    recovery = summary.record["recovery"]
    assert recovery["steps"] == 12 and recovery["kept"] == "recovered"
    assert recovery["valid_loss_after"] < recovery["valid_loss_before"]
    run = load_run(tmp_path / "pruned")
    for weight in prunable_matrices(run.model).values():  # fine-tuning regrew none of them
        assert int((weight == 0).sum()) == math.floor(0.7 * weight.numel() + 0.5)
    assert summary.after.size_bytes == summary.before.size_bytes  # zeros are stored too
    assert (tmp_path / "pruned" / "metrics.jsonl").is_file()
    assert not (tmp_path / "pruned" / "checkpoint").exists()


def test_prune_from_the_command_line(source_run, data, tmp_path):
    out = tmp_path / "pruned"
    pruned = kefu(
        "compress", "prune", str(source_run), "--sparsity", "0.25", "--method", "structured",
        "--out", str(out), "--recover-steps", "4",
    )  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    for shown in ("parameters", "size on disk", "zeros in pruned matrices", "recovery: 4 steps"):
        assert shown in pruned.stdout
    assert load_run(out).model.config.d_hidden == 128 - 32  # 25% of the 128 SwiGLU channels

    evaluated = kefu(
        "eval", "lm", str(out), "--data", str(data), "--replies", "2", "--max-new-tokens", "4"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "perplexity" in evaluated.stdout

    refused = kefu(
        "compress", "prune", str(source_run), "--sparsity", "-0.1", "--method", "magnitude",
        "--out", str(tmp_path / "never"),
    )  # fmt: skip
    assert refused.returncode == 1
    assert "strictly between 0 and 1" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "never").exists()
