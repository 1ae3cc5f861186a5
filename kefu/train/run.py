"""`kefu train lm` and `kefu train chat`: set up from a recipe, then hand over to the loop.

The two commands differ only in their data (`task`): packed text for lm, conversations with the
loss on the assistant's replies for chat. A run folder can start from another run's weights
(`--init RUN`), which is how a model pre-trained with lm is fine-tuned with chat. It can also
fine-tune a Hugging Face model (`--base`), all of it or LoRA adapters only (`--lora`): see
kefu.models.hf for what such a run folder holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kefu.console import note
from kefu.data.folder import split_texts
from kefu.errors import KefuError
from kefu.models import build_model
from kefu.models.checkpoint import CONFIG, TOKENIZER, load_run, read_run_config, save_run
from kefu.models.hf import TRAIN_BLOCK, HFConfig, load_base, save_hf_run
from kefu.text.tokenizer import ChatTokenizer, train_tokenizer
from kefu.train.data import build_batches, check_data
from kefu.train.loop import Distributed, TrainResult, resolve_device, train
from kefu.train.recipe import TrainRecipe


@dataclass
class TrainingSummary:
    run_dir: Path
    arch: str
    parameters: int
    train_tokens: int
    result: TrainResult


def _tokenizer(recipe: TrainRecipe, data_dir: Path, run_dir: Path, resume: bool) -> ChatTokenizer:
    if resume:
        return ChatTokenizer.load(run_dir / TOKENIZER)
    if recipe.tokenizer:
        return ChatTokenizer.load(recipe.tokenizer)
    note(f"no tokenizer given: training a {recipe.tokenizer_vocab_size}-token one on {data_dir}")
    return train_tokenizer(split_texts([data_dir]), recipe.tokenizer_vocab_size)


def run_training(
    recipe: TrainRecipe,
    run_dir: str | Path,
    resume: bool = False,
    init_from: str | Path | None = None,
    stop_at_step: int | None = None,
) -> TrainingSummary:
    """Train the recipe's model into `run_dir` (a new folder, or an interrupted run with `resume`).

    Args:
        init_from: a run folder whose weights (and tokenizer) the model starts from.
        stop_at_step: stop after this step as if interrupted (for tests of resume).
    """
    run_dir = Path(run_dir)
    # Every process checks the folder before any of them writes to it.
    group = Distributed(resolve_device(recipe.train.device))
    if recipe.data is None:
        raise KefuError("no training data: give --data DATA_FOLDER or set `data:` in the recipe")
    data_dir = Path(recipe.data)
    check_data(data_dir, recipe.task)
    # The recipe's Hugging Face base and LoRA settings; a resumed hf run keeps its own.
    hf_base, lora = recipe.base, recipe.lora
    if hf_base is not None and init_from is not None:
        raise KefuError("give --base (a Hugging Face model) or --init (a kefu run), not both")
    if resume:
        recorded = read_run_config(run_dir)
        if recorded["arch"] == "hf":  # the same base and LoRA settings as when it started
            started = HFConfig.model_validate(recorded["model"])
            hf_base, lora = started.base, started.lora
        elif recorded["arch"] != recipe.arch:
            raise KefuError(
                f"{run_dir} was trained as {recorded['arch']!r}; resume it with --arch {recorded['arch']}"
            )
    elif (run_dir / CONFIG).exists() or (run_dir / "checkpoint").exists():
        raise KefuError(
            f"{run_dir} already holds a run; continue it with --resume or choose a new --out"
        )

    arch = "hf" if hf_base is not None else recipe.arch
    if hf_base is not None:
        model, tokenizer = load_base(hf_base)
        torch.manual_seed(recipe.train.seed)
        if lora is not None:
            model.add_lora(lora)
        model.train()
        block = min(model.config.context_length, TRAIN_BLOCK)
    else:
        base = load_run(init_from, arch=recipe.arch) if init_from else None
        tokenizer = base.tokenizer if base else _tokenizer(recipe, data_dir, run_dir, resume)
        model_config = getattr(recipe, recipe.arch).model_copy(
            update={"vocab_size": tokenizer.vocab_size}
        )
        if base is not None:
            model_config = model_config.model_validate(base.config["model"])
        elif resume:  # the shape the run was started with, whatever the recipe says now
            model_config = model_config.model_validate(recorded["model"])
        torch.manual_seed(recipe.train.seed)
        model = base.model.train() if base else build_model(recipe.arch, model_config)
        block = model_config.context_length
    train_data = build_batches(recipe.task, data_dir, "train", tokenizer, block, recipe.train.seed)
    try:
        valid_data = build_batches(
            recipe.task, data_dir, "valid", tokenizer, block, recipe.train.seed
        )
    except KefuError:
        valid_data = None
        note(f"[yellow]{data_dir} has no usable valid split: no evaluation or early stopping[/]")
    described: dict[str, Any] = json.loads(recipe.model_dump_json())
    note(
        f"training a {model.num_parameters():,}-parameter {arch} ({recipe.task}) on "
        f"{train_data.tokens:,} tokens of {data_dir} into {run_dir}"
    )

    def save(trained: torch.nn.Module) -> None:
        if arch == "hf":
            save_hf_run(run_dir, trained, tokenizer, described)
        else:
            save_run(run_dir, arch, trained, tokenizer, described)

    group.barrier()
    if not resume and group.main:
        save(model)  # the folder is a loadable run from the start, and --resume knows its arch
    result = train(model, train_data, valid_data, recipe.train, run_dir, save, resume, stop_at_step)
    return TrainingSummary(run_dir, arch, model.num_parameters(), train_data.tokens, result)
