"""`kefu compress prune`: remove weights from a trained model, optionally fine-tune to recover.

Two methods, in `PRUNERS`:

    magnitude   every pruned matrix loses its share S of smallest-|w| weights, set to zero
                (the model keeps its shape: same size on disk, same speed)
    structured  a GPT loses the share S of its attention heads and of its MLP channels in every
                layer (the model gets smaller: fewer bytes, fewer FLOPs, a smaller KV cache)

    source run ─ load_run ─ prune ─► [recover: N steps of kefu's training loop] ─► new run folder
                                      (pruned weights held at zero for magnitude)

**Magnitude pruning is per matrix, not global.** Each matrix of every `nn.Linear` (but the output
layer) and every LSTM/GRU weight matrix loses exactly round(S · its size) weights. A global
threshold would hit some matrices much harder than others for reasons of scale, not importance:
the GPT initialises its residual projections (attention.out, mlp.down) with a smaller std, and a
global cut empties them first. Embeddings, norms, biases and the output layer (the vocabulary
projection, tied to the embedding by default) stay dense. The zeros stay zeros in storage and
arithmetic: dense kernels multiply by them, and safetensors stores them, so the model is exactly
as big and as fast as before. Its worth is as a step towards sparse kernels or compressed
storage, and as the quality baseline structured pruning is compared with. (On the demo's
d_model-256 GPT at 50%: 14.9 MB before and after, batch-1 decoding within noise of the dense
model, while structured pruning at 50% gave 8.5 MB and ~1.3x the speed; bench/compress.py.)

**Structured pruning (GPT only)** removes the same number of heads and channels in every layer,
so the result is a plain, uniform GPT config (with `d_head` set, since n_head · d_head no longer
equals d_model). S is the share removed, rounded to whole units:

- MLP: round(S · hidden) of the SwiGLU channels (a row of gate, a row of up, a column of down).
- Attention without grouping (n_kv_head = n_head): round(S · n_head) whole heads, with their
  query, key and value rows and their output columns.
- Grouped-query attention (g = n_head / n_kv_head query heads share a key/value head):
  round(S · g) query heads in every group; every key/value head stays. Removing query heads
  evenly keeps the grouping uniform and works even with a single key/value head; removing
  whole groups instead would allow only multiples of 1/n_kv_head (none at all with one group).
At least one head per group and one channel always stay.

Importance is a data-free bound on what a unit can add to the residual stream, from weight norms:

- head h reading key/value head j: ‖W_out[:, h]‖ · ‖W_v[j]‖. Attention mixes value vectors with
  weights that sum to 1, so the head's output is at most that times the largest input norm;
  queries and keys only move the mixing weights. Within a group (same j) it ranks by ‖W_out‖.
- channel c: ‖W_down[:, c]‖ · ‖W_gate[c]‖ · ‖W_up[c]‖, since |silu(z)| ≤ |z|.

Units are ranked within each layer (the norms share that layer's RMSNorm scale).

**Recovery** (`recover_steps`) fine-tunes the pruned model with kefu's training loop on the task,
data and training settings of the source run's recipe, at a tenth of its peak learning rate by
default (at the full rate, 40 steps made a 50% magnitude-pruned demo GPT worse; at a tenth they
brought it back to the dense model's perplexity), with a short warm-up and a few evaluations;
the best weights are kept, and the pruned weights before any fine-tuning win if none is better
on the validation split. Magnitude-pruned weights get no
gradient, so AdamW (whose moments then stay zero, and whose decay keeps zero at zero) leaves them
exactly at zero.

The output folder is an ordinary run folder (`load_run`, `kefu eval lm`, `kefu chat`, the engine
and the server take it as is); its config.yaml adds `source_run` and `compression: {pruning: ...}`.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from kefu.config import validate
from kefu.console import note
from kefu.errors import KefuError
from kefu.files import replaced_folder, write_text_atomically
from kefu.models import MODELS
from kefu.models.checkpoint import CONFIG, WEIGHTS, load_run, read_run_config, save_run
from kefu.models.gpt import GPT, GPTConfig
from kefu.text.tokenizer import ChatTokenizer
from kefu.train.data import build_batches, check_data
from kefu.train.loop import BestWeights, TrainConfig, evaluate, resolve_device, train


@dataclass
class Pruned:
    """What a pruning method returns: the model (pruned in place or rebuilt smaller), the masks
    of kept weights to hold during recovery (magnitude only), and what to record in config.yaml."""

    model: nn.Module
    masks: dict[str, Tensor] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def check_sparsity(sparsity: float) -> float:
    """`sparsity` if it lies strictly between 0 and 1, else a KefuError saying so."""
    if not 0.0 < sparsity < 1.0:  # NaN fails this too
        raise KefuError(
            f"--sparsity {sparsity} is outside the allowed range: give a share strictly between "
            "0 and 1 (e.g. 0.5 removes half), not 0 (nothing to prune) or 1 (nothing left)"
        )
    return sparsity


def _removed(sparsity: float, units: int) -> int:
    """How many of `units` a share `sparsity` removes: rounded half up, at least one kept."""
    return min(math.floor(sparsity * units + 0.5), units - 1)


# -- magnitude ------------------------------------------------------------------------------


def prunable_matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """The matrices magnitude pruning thins, by parameter name: the weight of every `nn.Linear`
    but the output layer `lm_head`, and every weight matrix of a recurrent layer."""
    matrices: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if module_name == "lm_head":
            continue
        if isinstance(module, nn.Linear):
            matrices[f"{module_name}.weight"] = module.weight
        elif isinstance(module, nn.RNNBase):
            for name, parameter in module.named_parameters(recurse=False):
                if name.startswith("weight_"):
                    matrices[f"{module_name}.{name}"] = parameter
    return matrices


def zero_share(model: nn.Module) -> float:
    """The share of exact zeros among the weights of `prunable_matrices(model)`."""
    matrices = prunable_matrices(model).values()
    zeros = sum(int((m == 0).sum()) for m in matrices)
    return zeros / max(1, sum(m.numel() for m in matrices))


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> Pruned:
    """Zero the smallest-|w| share `sparsity` of each prunable matrix, in place."""
    masks = {}
    for name, weight in prunable_matrices(model).items():
        order = torch.argsort(weight.abs().flatten(), stable=True)
        keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
        keep[order[: _removed(sparsity, weight.numel())]] = False
        masks[name] = keep.view_as(weight)
        weight.mul_(masks[name])
    record = {"scope": "per matrix", "matrices": len(masks)}
    return Pruned(model, masks, record)


# -- structured (GPT) -----------------------------------------------------------------------


def head_importance(block: nn.Module, config: GPTConfig) -> Tensor:
    """(n_head,) ‖W_out columns of head h‖ · ‖W_v rows of its key/value head‖."""
    D, group = config.head_dim, config.n_head // config.kv_heads
    q_width, kv_width = config.n_head * D, config.kv_heads * D
    values = block.attention.qkv.weight[q_width + kv_width :]  # (KV·D, C)
    value_norms = values.view(config.kv_heads, D, -1).flatten(1).norm(dim=1)  # (KV,)
    out = block.attention.out.weight  # (C, H·D)
    out_norms = out.view(out.shape[0], config.n_head, D).transpose(0, 1).flatten(1).norm(dim=1)
    return out_norms * value_norms.repeat_interleave(group)


def channel_importance(block: nn.Module) -> Tensor:
    """(hidden,) ‖W_down[:, c]‖ · ‖W_gate[c]‖ · ‖W_up[c]‖ of each SwiGLU channel."""
    gate, up = block.mlp.gate_up.weight.chunk(2, dim=0)  # (hidden, C) each
    return block.mlp.down.weight.norm(dim=0) * gate.norm(dim=1) * up.norm(dim=1)


def _top(scores: Tensor, keep: int) -> Tensor:
    """Indices of the `keep` highest scores, in ascending index order (ties: lower index)."""
    order = torch.argsort(-scores, stable=True)[:keep]
    return order.sort().values


def kept_units(model: GPT, sparsity: float) -> list[tuple[Tensor, Tensor, Tensor]]:
    """For every layer: the query heads, key/value heads and MLP channels that stay."""
    c = model.config
    group = c.n_head // c.kv_heads
    kept = []
    for block in model.blocks:
        heads = head_importance(block, c)
        if group == 1:
            query = _top(heads, c.n_head - _removed(sparsity, c.n_head))
            kv = query
        else:  # the same number of query heads in every group, so the grouping stays uniform
            per_group = group - _removed(sparsity, group)
            query = torch.cat(
                [
                    j * group + _top(heads[j * group : (j + 1) * group], per_group)
                    for j in range(c.kv_heads)
                ]
            )
            kv = torch.arange(c.kv_heads)
        channels = _top(channel_importance(block), c.hidden - _removed(sparsity, c.hidden))
        kept.append((query, kv, channels))
    return kept


def _rows(weight: Tensor, units: Tensor, width: int) -> Tensor:
    """Rows of the kept `units`, each unit `width` consecutive rows."""
    return weight.view(-1, width, weight.shape[-1])[units].flatten(0, 1)


@torch.no_grad()
def structured_prune(model: nn.Module, sparsity: float) -> Pruned:
    """A smaller GPT without the least important heads and MLP channels of every layer."""
    if not isinstance(model, GPT):
        raise KefuError(
            f"structured pruning removes attention heads and MLP channels of a GPT; this run is a "
            f"{type(model).__name__}: use --method magnitude"
        )
    c = model.config
    kept = kept_units(model, sparsity)
    query, kv, channels = kept[0]
    n_head, n_kv, hidden = len(query), len(kv), len(channels)
    if n_head == c.n_head:
        step = c.kv_heads / c.n_head if c.kv_heads < c.n_head else 1 / c.n_head
        note(
            f"[yellow]sparsity {sparsity} removes no attention head: heads go in steps of "
            f"{step:.3g} of them in this model; only MLP channels were pruned[/]"
        )
    config = GPTConfig.model_validate(
        c.model_dump()
        | {
            "n_head": n_head,
            "n_kv_head": None if n_kv == n_head else n_kv,
            "d_head": c.head_dim,
            "d_hidden": hidden,
        }
    )
    state = {
        name: value
        for name, value in model.state_dict().items()
        if not name.startswith("blocks.")  # embedding, final norm, output layer: unchanged
    }
    D, q_width, kv_width = c.head_dim, c.n_head * c.head_dim, c.kv_heads * c.head_dim
    for i, (block, (query, kv, channels)) in enumerate(zip(model.blocks, kept, strict=True)):
        q, k, v = block.attention.qkv.weight.split((q_width, kv_width, kv_width), dim=0)
        out = block.attention.out.weight  # (C, H·D)
        gate, up = block.mlp.gate_up.weight.chunk(2, dim=0)
        prefix = f"blocks.{i}"
        state |= {
            f"{prefix}.attention_norm.weight": block.attention_norm.weight,
            f"{prefix}.mlp_norm.weight": block.mlp_norm.weight,
            f"{prefix}.attention.qkv.weight": torch.cat(
                (_rows(q, query, D), _rows(k, kv, D), _rows(v, kv, D))
            ),
            f"{prefix}.attention.out.weight": _rows(out.T, query, D).T,
            f"{prefix}.mlp.gate_up.weight": torch.cat((gate[channels], up[channels])),
            f"{prefix}.mlp.down.weight": block.mlp.down.weight[:, channels],
        }
    smaller = GPT(config).to(model.embed.weight.device)
    smaller.load_state_dict({name: value.contiguous() for name, value in state.items()})
    record = {
        "importance": "weight norms (head: |W_out|·|W_v|, channel: |W_down|·|W_gate|·|W_up|)",
        "n_head": [c.n_head, n_head],
        "n_kv_head": [c.kv_heads, n_kv],
        "d_hidden": [c.hidden, hidden],
        "heads_removed_share": round(1 - n_head / c.n_head, 4),
        "channels_removed_share": round(1 - hidden / c.hidden, 4),
    }
    return Pruned(smaller.eval(), {}, record)


# Pruning methods by the name given to --method.
PRUNERS: dict[str, Callable[[nn.Module, float], Pruned]] = {
    "magnitude": magnitude_prune,
    "structured": structured_prune,
}


def pruner(method: str) -> Callable[[nn.Module, float], Pruned]:
    if method not in PRUNERS:
        raise KefuError(f"unknown pruning method {method!r}; valid methods: {', '.join(PRUNERS)}")
    return PRUNERS[method]


# -- recovery -------------------------------------------------------------------------------


def recovery_config(source: dict[str, Any], steps: int, lr: float | None) -> TrainConfig:
    """The source recipe's training settings (`train:`) for a fine-tune of `steps` steps: a
    tenth of its peak learning rate unless `lr` is given, a warm-up of at most a tenth of the
    steps, and at least four evaluations to pick the best from."""
    fields = {
        "max_steps": steps,
        "lr": source["lr"] / 10 if lr is None else lr,
        "warmup_steps": min(source["warmup_steps"], steps // 10),
        "eval_every": max(1, min(source["eval_every"], steps // 4)),
        "compile": False,  # a minute of compiling does not pay for a short fine-tune
    }
    return validate(TrainConfig, source | fields, "the recovery options", "training config")


def recover(
    model: nn.Module,
    masks: dict[str, Tensor],
    task: str,
    tokenizer: ChatTokenizer,
    data_dir: Path,
    config: TrainConfig,
    run_dir: Path,
) -> dict[str, Any]:
    """Fine-tune a pruned `model` in place with kefu's training loop; keep the best weights.

    Args:
        masks: parameter name → kept weights; the others get no gradient and stay zero.
        task: "lm" or "chat", as the source run was trained.
        run_dir: where the loop writes metrics.jsonl (its checkpoint/ is removed afterwards).
    """
    check_data(data_dir, task)
    block = model.config.context_length
    train_data = build_batches(task, data_dir, "train", tokenizer, block, config.seed)
    try:
        valid_data = build_batches(task, data_dir, "valid", tokenizer, block, config.seed)
    except KefuError:
        valid_data = None
        note(f"[yellow]{data_dir} has no usable valid split: recovery keeps the last weights[/]")
    device = resolve_device(config.device)
    model.to(device)

    def valid_loss() -> float | None:
        if valid_data is None:
            return None
        batch = config.batch_size // config.grad_accum
        autocast = config.precision == "bf16"
        return evaluate(model, valid_data, config.eval_batches, batch, autocast, device)

    before = valid_loss()
    pruned_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    hooks = [
        parameters[name].register_hook(lambda grad, keep=keep: grad * keep)
        for name, keep in ((name, keep.to(device)) for name, keep in masks.items())
    ]
    best = BestWeights()
    try:
        result = train(model, train_data, valid_data, config, run_dir, best)
    finally:
        for hook in hooks:
            hook.remove()
    best.restore(model)
    after = valid_loss()
    improved = before is None or (after is not None and after < before)
    if not improved:
        model.load_state_dict(pruned_state)
        note("[yellow]recovery did not lower the validation loss: kept the pruned weights[/]")
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # pruning runs do not resume
    model.cpu().eval()
    return {
        "steps": result.step,
        "lr": config.lr,
        "data": str(data_dir),
        "valid_loss_before": None if before is None else round(before, 5),
        "valid_loss_after": None if after is None else round(after, 5),
        "kept": "recovered" if improved else "pruned",
    }


# -- the command ----------------------------------------------------------------------------


@dataclass
class ModelFacts:
    """What `kefu compress prune` reports of a model before and after."""

    parameters: int
    size_bytes: int  # of model.safetensors
    zero_share: float  # zeros among the prunable matrices' weights


@dataclass
class PruneSummary:
    run_dir: Path
    source: Path
    method: str
    sparsity: float
    before: ModelFacts
    after: ModelFacts
    record: dict[str, Any]


def _facts(model: nn.Module, run_dir: Path) -> ModelFacts:
    return ModelFacts(model.num_parameters(), (run_dir / WEIGHTS).stat().st_size, zero_share(model))


def prune_run(
    run_dir: str | Path,
    out_dir: str | Path,
    method: str,
    sparsity: float,
    recover_steps: int = 0,
    data: str | Path | None = None,
    lr: float | None = None,
) -> PruneSummary:
    """Prune the model of `run_dir` into a new run folder `out_dir`; see the module docstring.

    Args:
        recover_steps: fine-tune this many steps after pruning (0: none).
        data: data folder for recovery; default the source recipe's `data`.
        lr: peak learning rate for recovery; default a tenth of the source recipe's.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    prune = pruner(method)
    check_sparsity(sparsity)
    if recover_steps < 0:
        raise KefuError(f"--recover-steps {recover_steps} is negative; give 0 (none) or more")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise KefuError(f"{out_dir} already exists and is not empty; choose a new --out folder")
    recorded = read_run_config(run_dir)
    if recorded["arch"] not in MODELS:
        raise KefuError(
            f"{run_dir} holds a {recorded['arch']!r} model; pruning works on kefu's own "
            f"architectures ({', '.join(MODELS)})"
        )
    if "quantized" in recorded:
        raise KefuError(
            f"{run_dir} is quantized; prune the run it was quantized from, then quantize the result"
        )
    source = load_run(run_dir, arch=recorded["arch"])
    recipe = source.config["recipe"]
    data_dir, config = None, None
    if recover_steps:
        if not {"task", "train"} <= recipe.keys():
            raise KefuError(
                f"{run_dir / CONFIG} records no training recipe (task and train settings), "
                "which recovery fine-tunes with; prune without --recover-steps"
            )
        config = recovery_config(recipe["train"], recover_steps, lr)
        chosen = data or recipe.get("data")
        if not chosen:
            raise KefuError(
                f"recovery needs data: {run_dir}'s recipe names none; give --data DATA_FOLDER"
            )
        data_dir = Path(chosen)
        if not data_dir.is_dir():
            raise KefuError(f"recovery data folder {data_dir} does not exist; give --data")
    before = _facts(source.model, run_dir)

    started = time.perf_counter()
    pruned = prune(source.model, sparsity)
    model = pruned.model
    record: dict[str, Any] = {"method": method, "sparsity": sparsity, **pruned.record}
    with replaced_folder(out_dir) as staging:
        if config is not None and data_dir is not None:
            record["recovery"] = recover(
                model, pruned.masks, recipe["task"], source.tokenizer, data_dir, config, staging
            )
        record["zero_share"] = round(zero_share(model), 6)
        record["seconds"] = round(time.perf_counter() - started, 2)
        save_run(staging, source.arch, model, source.tokenizer, recipe)
        config = yaml.safe_load((staging / CONFIG).read_text(encoding="utf-8"))
        config["source_run"] = str(run_dir.resolve())
        config["compression"] = {**source.config.get("compression", {}), "pruning": record}
        write_text_atomically(
            staging / CONFIG, yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        )
    after = _facts(model, out_dir)
    return PruneSummary(out_dir, run_dir, method, sparsity, before, after, record)
