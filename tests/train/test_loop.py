"""The shared training loop: schedule, exact resume, early stopping, loss masking."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from kefu.models.checkpoint import save_weights
from kefu.models.gpt import GPT, GPTConfig
from kefu.models.lstm import LSTMConfig, RecurrentLM
from kefu.train.data import ChatExamples, PackedTokens, truncate_left
from kefu.train.loop import IGNORE, TrainConfig, learning_rate, train


def tiny(arch: str):
    torch.manual_seed(0)
    if arch == "gpt":
        return GPT(
            GPTConfig(
                vocab_size=50, context_length=16, n_layer=2, n_head=2, d_model=16, dropout=0.1
            )
        )
    return RecurrentLM(
        LSTMConfig(vocab_size=50, context_length=16, d_embed=16, d_hidden=24, dropout=0.1)
    )


def stream(seed: int, length: int = 2000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (length,), generator=generator)


def test_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(max_steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, config) == pytest.approx(0.1)
    assert learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(60, config) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert learning_rate(110, config) == pytest.approx(0.1)


def losses(run_dir) -> list[float]:
    return [
        json.loads(line)["train_loss"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_stop_and_resume_gives_the_same_losses_and_weights(tmp_path, arch):
    """N steps, stop, resume for N more == 2N steps in one go (dropout on, so RNG state matters)."""
    config = TrainConfig(
        max_steps=12,
        batch_size=4,
        grad_accum=2,
        warmup_steps=3,
        eval_every=1,
        eval_batches=2,
        lr=1e-2,
    )
    data, valid = PackedTokens(stream(1), 16, seed=0), PackedTokens(stream(2), 16, seed=0)

    def saver(path):
        return lambda model: save_weights(model, path / "best.safetensors")

    straight = tmp_path / "straight"
    train(tiny(arch), data, valid, config, straight, saver(straight))
    interrupted = tmp_path / "interrupted"
    train(tiny(arch), data, valid, config, interrupted, saver(interrupted), stop_at_step=5)
    assert len(losses(interrupted)) == 5
    model = tiny(arch)
    torch.manual_seed(1234)  # resume must restore the RNG, not depend on the caller's
    train(model, data, valid, config, interrupted, saver(interrupted), resume=True)
    assert losses(interrupted) == losses(straight)
    final_straight = load_file(straight / "checkpoint" / "model.safetensors")
    final_resumed = load_file(interrupted / "checkpoint" / "model.safetensors")
    assert all(torch.equal(final_straight[k], final_resumed[k]) for k in final_straight)


def test_training_reduces_loss_and_early_stopping_stops(tmp_path):
    # Train on "a b a b ...", validate on "a c a c ...": learning the one hurts the other.
    train_stream = torch.tensor([1, 2] * 500)
    valid_stream = torch.tensor([1, 3] * 500)
    config = TrainConfig(
        max_steps=200,
        batch_size=4,
        warmup_steps=0,
        eval_every=5,
        eval_batches=1,
        lr=1e-2,
        early_stopping=2,
    )
    model = tiny("gpt")
    result = train(
        model,
        PackedTokens(train_stream, 16, 0),
        PackedTokens(valid_stream, 16, 0),
        config,
        tmp_path,
        lambda m: None,
    )
    assert result.stopped_early and result.step < 200
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] < 0.5 * math.log(50)  # it did learn the training pattern
    assert records[-1]["valid_loss"] > records[0]["valid_loss"]


def test_chat_batches_put_loss_on_assistant_tokens_only():
    examples = [([5, 6, 7, 8, 9], [0, 0, 1, 1, 1]), ([5, 7, 9], [0, 1, 1])]
    data = ChatExamples(examples, pad_id=0, block=256, seed=0)
    inputs, targets = data.batch(0, 2)
    assert inputs.shape == targets.shape == (2, 64)  # widths are rounded up to 64
    rows = sorted(
        zip(inputs[:, :4].tolist(), targets[:, :4].tolist(), strict=True),
        key=lambda r: -r[0].count(0),
    )
    assert rows[0] == ([5, 7, 0, 0], [7, 9, IGNORE, IGNORE])
    assert rows[1] == ([5, 6, 7, 8], [IGNORE, 7, 8, 9])
    assert (targets[:, 4:] == IGNORE).all() and (inputs[:, 4:] == 0).all()


def test_history_is_cut_from_the_left_at_a_turn_boundary():
    # 100 = a role token starting each turn
    ids = [100, 1, 2, 3, 100, 4, 5, 100, 6, 7]
    mask = [0, 0, 0, 0, 0, 1, 1, 0, 1, 1]
    assert truncate_left(ids, mask, 8, {100}) == ([100, 4, 5, 100, 6, 7], [0, 1, 1, 0, 1, 1])
    assert truncate_left(ids, mask, 20, {100}) == (ids, mask)
    assert truncate_left(ids, mask, 2, {100}) == ([6, 7], [1, 1])  # no boundary leaves a reply
