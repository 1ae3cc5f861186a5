"""The one training loop every kefu trainer shares.

A trainer supplies a model, `Batches` of (inputs, targets) and a function that saves the model;
the loop does the rest: AdamW (fused where available), warm-up plus cosine schedule, gradient
accumulation and clipping, optional label smoothing, bf16 autocast, evaluation every N steps
into metrics.jsonl, early stopping on validation loss, and checkpoints that resume exactly.

Exact resume rests on one rule: the batch of step s is a pure function of (seed, s). Together
with the saved model, optimizer, schedule and RNG state, a run stopped at step N and resumed
computes the same losses as a run that never stopped.

The training loss is cross-entropy on the targets unless the trainer passes an `objective`
(distillation passes one that also matches a teacher's logits); validation is always
cross-entropy, so valid_loss and valid_ppl mean the same for every run.

More than one process (torchrun): every process draws the same global batch and takes its own
rows; the loss is normalised by the global count of target tokens, so the gradient is the one a
single process would compute. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_model
from torch import Tensor, nn

from kefu.config import StrictModel
from kefu.console import settings, stderr
from kefu.errors import KefuError
from kefu.files import replaced_folder
from kefu.models.checkpoint import METRICS, save_weights

IGNORE = -100  # target id that carries no loss (padding, customer turns)

# (logits, inputs, targets) → the summed loss of one micro-batch, over the targets that are not
# IGNORE (their count normalises it); the loop's default is plain cross-entropy.
Objective = Callable[[Tensor, Tensor, Tensor], Tensor]


class TrainConfig(StrictModel):
    """How to train: steps, batch, optimizer, schedule, evaluation, precision."""

    max_steps: int = Field(1000, ge=1, description="Optimizer steps in all.")
    batch_size: int = Field(
        16, ge=1, description="Sequences per optimizer step, across all processes."
    )
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches the batch is split into (to save memory)."
    )
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final learning rate as a share of the peak."
    )
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up from 0 to the peak.")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW weight decay on matrices (not norms)."
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this; null: no clipping."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    eval_every: int = Field(100, ge=1, description="Evaluate (and checkpoint) every N steps.")
    eval_batches: int = Field(20, ge=1, description="Validation batches per evaluation.")
    early_stopping: int | None = Field(
        None, ge=1, description="Stop after N evaluations without improvement."
    )
    seed: int = Field(0, description="Seeds initialisation, data order and dropout.")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 autocast (CPU or CUDA) or plain fp32."
    )
    compile: bool = Field(
        False, description="torch.compile the model: slower start (about a minute), faster steps."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train; auto takes CUDA when present."
    )
    time_limit_minutes: float | None = Field(
        None, gt=0, description="Stop (and save) after this long."
    )


class Batches(Protocol):
    """Training or validation data: batch `index` of `size` rows, the same on every call."""

    def batch(self, index: int, size: int) -> tuple[Tensor, Tensor]:
        """(inputs, targets), both (size, T); targets hold IGNORE where there is no loss."""
        ...


@dataclass
class TrainResult:
    step: int
    best_valid_loss: float | None
    stopped_early: bool
    last_train_loss: float | None


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise KefuError(
            "the recipe asks for device: cuda, but no CUDA device is available; use auto or cpu"
        )
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio · lr at max_steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def _optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    betas = (config.beta1, config.beta2)
    try:
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):  # fused kernels are missing for some device/dtype pairs
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas, foreach=device.type == "cuda")


class Distributed:
    """This process's place in a torchrun group (a group of one without torchrun)."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def total(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item())


def _token_losses(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    smoothing: float,
    autocast: bool,
    objective: Objective | None = None,
) -> Tensor:
    """Summed cross-entropy (or `objective`) over the target tokens of one micro-batch."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(inputs)
    if objective is not None:
        return objective(logits.float(), inputs, targets)
    return F.cross_entropy(
        logits.float().flatten(0, -2),  # (B, T, V) for language models, (B, C) for classifiers
        targets.flatten(),
        ignore_index=IGNORE,
        reduction="sum",
        label_smoothing=smoothing,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Batches,
    batches: int,
    batch_size: int,
    autocast: bool,
    device: torch.device,
) -> float:
    """Mean cross-entropy per target token over the first `batches` batches of `data`."""
    was_training = model.training
    model.eval()
    total = tokens = 0.0
    for index in range(batches):
        inputs, targets = (t.to(device) for t in data.batch(index, batch_size))
        total += float(_token_losses(model, inputs, targets, 0.0, autocast))
        tokens += int((targets != IGNORE).sum())
    model.train(was_training)
    return total / max(tokens, 1)


class _Checkpoint:
    """checkpoint/ in the run folder: weights plus everything else needed to resume exactly."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / "checkpoint"

    def exists(self) -> bool:
        return (self.folder / "trainer.pt").is_file()

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        with replaced_folder(self.folder) as staging:
            save_weights(model, staging / "model.safetensors")
            rng = {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
            torch.save(
                {"optimizer": optimizer.state_dict(), "rng": rng, **state}, staging / "trainer.pt"
            )

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        load_model(model, str(self.folder / "model.safetensors"))
        saved = torch.load(self.folder / "trainer.pt", weights_only=True)
        optimizer.load_state_dict(saved.pop("optimizer"))
        rng = saved.pop("rng")
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        return saved


class BestWeights:
    """A `save_model` for `train` that keeps the best weights in memory, to restore at the end."""

    def __init__(self) -> None:
        self.state: dict[str, Tensor] = {}

    def __call__(self, model: nn.Module) -> None:
        self.state = {name: value.detach().clone() for name, value in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.state:
            model.load_state_dict(self.state)


def train(
    model: nn.Module,
    train_data: Batches,
    valid_data: Batches | None,
    config: TrainConfig,
    run_dir: str | Path,
    save_model: Callable[[nn.Module], None],
    resume: bool = False,
    stop_at_step: int | None = None,
    objective: Objective | None = None,
) -> TrainResult:
    """Train `model` in place; write metrics, checkpoints and (via `save_model`) the best model.

    Args:
        save_model: writes the model into the run folder; called with the unwrapped model
            whenever validation improves (or at the end when there is no validation data).
        resume: continue from run_dir/checkpoint.
        stop_at_step: stop after this step as if interrupted (the schedule still spans max_steps).
        objective: the training loss instead of cross-entropy (label_smoothing then unused).
    """
    session = _Session(model, config, Path(run_dir), save_model, resume, objective)
    last = min(config.max_steps, stop_at_step or config.max_steps)
    stopped_early = False
    with _progress(last - session.state["step"]) as bar:
        task = bar.add_task(
            "train", total=last - session.state["step"], loss="-", lr="-", speed="-"
        )
        while session.state["step"] < last:
            step = session.state["step"]
            loss = session.step(*train_data.batch(step, config.batch_size))
            speed = session.speed()
            lr = f"{learning_rate(step, config):.2e}"
            bar.update(task, advance=1, loss=f"{loss:.3f}", lr=lr, speed=f"{speed:,.0f}")
            timed_out = (
                config.time_limit_minutes is not None
                and session.elapsed() > 60 * config.time_limit_minutes
            )
            if (
                session.state["step"] % config.eval_every == 0
                or session.state["step"] == last
                or timed_out
            ):
                record = session.evaluate(valid_data)
                if session.group.main and not settings.quiet:
                    valid = (
                        f", valid loss {record['valid_loss']:.4f}" if "valid_loss" in record else ""
                    )
                    bar.console.log(
                        f"step {record['step']}: train loss {record['train_loss']:.4f}{valid}, {speed:,.0f} tok/s"
                    )
                stopped_early = bool(
                    config.early_stopping and session.state["stale"] >= config.early_stopping
                )
                if stopped_early or timed_out:
                    break
    if valid_data is None and session.group.main:
        save_model(model)
    session.group.barrier()
    return TrainResult(
        session.state["step"], session.state["best"], stopped_early, session.last_loss
    )


class _Session:
    """One run of the loop: the model, its optimizer, where it writes, and the state it resumes."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        run_dir: Path,
        save_model: Callable[[nn.Module], None],
        resume: bool,
        objective: Objective | None = None,
    ) -> None:
        self.config = config
        self.objective = objective
        self.device = resolve_device(config.device)
        self.group = Distributed(self.device)
        torch.manual_seed(config.seed)
        self.model = model.to(self.device).train()
        self.optimizer = _optimizer(model, config, self.device)
        self.checkpoint = _Checkpoint(run_dir)
        self.metrics_path = run_dir / METRICS
        self.save_model = save_model
        self.state: dict = {"step": 0, "best": None, "stale": 0, "tokens": 0}
        if resume:
            if not self.checkpoint.exists():
                raise KefuError(
                    f"nothing to resume in {run_dir}: no checkpoint/ folder; start without --resume"
                )
            self.state.update(self.checkpoint.load(model, self.optimizer))
        elif self.group.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics_path.unlink(missing_ok=True)
        self.wrapped = nn.parallel.DistributedDataParallel(model) if self.group.world > 1 else model
        if config.compile:
            self.wrapped = torch.compile(self.wrapped)
        self.autocast = config.precision == "bf16"
        self.rows = config.batch_size // self.group.world
        if self.rows * self.group.world != config.batch_size or self.rows % config.grad_accum:
            raise KefuError(
                f"batch_size {config.batch_size} must split evenly over {self.group.world} process(es) "
                f"and then into grad_accum {config.grad_accum} micro-batches"
            )
        self.micro = self.rows // config.grad_accum
        self.started, self.tokens_before = time.perf_counter(), self.state["tokens"]
        self.window: list[float] = []  # training losses since the last evaluation
        self.last_loss: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def speed(self) -> float:
        """Tokens per second in this session, every position computed (padding included)."""
        return (self.state["tokens"] - self.tokens_before) / self.elapsed()

    def step(self, inputs: Tensor, targets: Tensor) -> float:
        """One optimizer step on this process's rows of the global batch; the global mean loss."""
        config, group = self.config, self.group
        mine = slice(group.rank * self.rows, (group.rank + 1) * self.rows)
        inputs, targets = inputs[mine].to(self.device), targets[mine].to(self.device)
        tokens = group.total(float((targets != IGNORE).sum()))
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = learning_rate(self.state["step"], config)
        loss_sum = 0.0
        for part in range(config.grad_accum):
            chunk = slice(part * self.micro, (part + 1) * self.micro)
            loss = _token_losses(
                self.wrapped,
                inputs[chunk],
                targets[chunk],
                config.label_smoothing,
                self.autocast,
                self.objective,
            )
            # DDP averages gradients over processes; scaling by world makes that a global mean.
            (loss * group.world / max(tokens, 1)).backward()
            loss_sum += float(loss.detach())
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = group.total(loss_sum) / max(tokens, 1)
        self.window.append(self.last_loss)
        self.state["step"] += 1
        self.state["tokens"] += inputs.numel() * group.world
        return self.last_loss

    def evaluate(self, valid_data: Batches | None) -> dict:
        """Validate, keep the best model, append to metrics.jsonl, checkpoint; the record."""
        record = {
            "step": self.state["step"],
            "train_loss": round(sum(self.window) / len(self.window), 5),
            "lr": learning_rate(self.state["step"] - 1, self.config),
            "tokens": self.state["tokens"],
            "elapsed_s": round(self.elapsed(), 2),
        }
        self.window = []
        if valid_data is not None:
            valid = evaluate(
                self.model,
                valid_data,
                self.config.eval_batches,
                # Every process scores the same batches, as a single process would.
                self.config.batch_size // self.config.grad_accum,
                self.autocast,
                self.device,
            )
            record |= {
                "valid_loss": round(valid, 5),
                "valid_ppl": round(math.exp(min(valid, 50)), 3),
            }
            if self.state["best"] is None or valid < self.state["best"]:
                self.state["best"], self.state["stale"] = valid, 0
                if self.group.main:
                    self.save_model(self.model)
            else:
                self.state["stale"] += 1
        if self.group.main:
            with open(self.metrics_path, "a", encoding="utf-8") as metrics:
                metrics.write(json.dumps(record) + "\n")
            self.checkpoint.save(self.model, self.optimizer, dict(self.state))
        return record


def _progress(total: int) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
        disable=settings.quiet or int(os.environ.get("RANK", "0")) != 0,
    )
