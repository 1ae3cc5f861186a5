"""Run folders: a trained model with everything needed to load it and nothing else.

runs/<name>/
  model.safetensors   the weights
  config.yaml         kefu version, architecture, model config and the recipe it came from
  tokenizer.json      the tokenizer it was trained with
  metrics.jsonl       one line per evaluation during training
  checkpoint/         optimizer, schedule, RNG and data position, for `--resume` (training only)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from kefu import __version__
from kefu.errors import KefuError
from kefu.files import replaced_atomically, write_text_atomically
from kefu.models import MODELS, build_model, model_config
from kefu.text.tokenizer import ChatTokenizer

WEIGHTS, CONFIG, TOKENIZER, METRICS = (
    "model.safetensors",
    "config.yaml",
    "tokenizer.json",
    "metrics.jsonl",
)


def save_weights(model: nn.Module, path: Path) -> None:
    """Weights to safetensors, atomically; shared (tied) tensors are stored once."""
    with replaced_atomically(path) as temporary:
        save_model(model, str(temporary))


def save_described(run_dir: Path, model: nn.Module, described: dict[str, Any]) -> None:
    """A small model's run folder: model.safetensors, and config.json with what rebuilds it."""
    save_weights(model, run_dir / "model.safetensors")
    write_text_atomically(
        run_dir / "config.json", json.dumps(described, indent=2, ensure_ascii=False) + "\n"
    )


def read_described(run_dir: str | Path, kind: str, command: str) -> dict[str, Any]:
    """The config.json `save_described` wrote, checked to describe a model of `kind`.

    Args:
        command: the kefu command that trains such a model, for the error message.
    """
    path = Path(run_dir) / "config.json"
    try:
        described = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KefuError(
            f"{run_dir} is not a {kind} model (no config.json); train one with `{command}`"
        ) from None
    if described.get("kind") != kind:
        raise KefuError(
            f"{path} does not describe a kefu {kind} model (kind: {described.get('kind')!r})"
        )
    return described


def save_run(
    run_dir: str | Path,
    arch: str,
    model: nn.Module,
    tokenizer: ChatTokenizer,
    recipe: dict[str, Any],
) -> None:
    """Write the model, its config and its tokenizer into `run_dir`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, run_dir / WEIGHTS)
    tokenizer.save(run_dir / TOKENIZER)
    described = {
        "kefu_version": __version__,
        "arch": arch,
        "parameters": model.num_parameters(),
        "model": model.config.model_dump(),
        "recipe": recipe,
    }
    write_text_atomically(
        run_dir / CONFIG, yaml.safe_dump(described, sort_keys=False, allow_unicode=True)
    )


@dataclass
class LoadedRun:
    """A model loaded from a run folder, with its tokenizer and what was recorded about it."""

    path: Path
    arch: str
    model: nn.Module
    tokenizer: ChatTokenizer
    config: dict[str, Any]


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise KefuError(
            f"{run_dir} is not a kefu run folder (no {CONFIG}); train one with `kefu train lm` or `kefu train chat`"
        )
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or config.get("arch") not in (*MODELS, "hf"):
        raise KefuError(
            f"{path}: no known `arch` (one of {', '.join(MODELS)}, hf); the run folder is damaged"
        )
    return config


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", arch: str | None = None
) -> LoadedRun:
    """Load a run folder's model in eval mode, with its tokenizer.

    Args:
        arch: the architecture the caller expects; a run of another one is a clear error.
    """
    run_dir = Path(run_dir)
    from kefu.models.hf import is_hf_folder, load_hf_run

    if arch in (None, "hf") and is_hf_folder(run_dir):  # a plain Hugging Face model folder
        return load_hf_run(run_dir, device)
    config = read_run_config(run_dir)
    if arch is not None and config["arch"] != arch:
        raise KefuError(
            f"{run_dir} holds a {config['arch']!r} model, not {arch!r}; pick a run of the right architecture"
        )
    if config["arch"] == "hf":  # a run of kefu.models.hf: fine-tuned, LoRA or merged
        return load_hf_run(run_dir, device)
    model = build_model(config["arch"], model_config(config["arch"], config["model"]))
    if "quantized" in config:  # from `kefu compress quantize`: int8 tensors, its own layout
        from kefu.compress.quantize import load_quantized

        model = load_quantized(model, config["quantized"]["method"], run_dir / WEIGHTS, device)
        tokenizer = ChatTokenizer.load(run_dir / TOKENIZER)
        return LoadedRun(run_dir, config["arch"], model.eval(), tokenizer, config)
    try:
        missing, unexpected = load_model(model, str(run_dir / WEIGHTS), strict=False)
    except FileNotFoundError:
        raise KefuError(f"{run_dir / WEIGHTS} is missing; the run did not finish saving") from None
    if missing or unexpected:
        raise KefuError(
            f"{run_dir / WEIGHTS} does not fit a {config['arch']} model with the config in {CONFIG} "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
            "it may come from another architecture"
        )
    tokenizer = ChatTokenizer.load(run_dir / TOKENIZER)
    return LoadedRun(run_dir, config["arch"], model.to(device).eval(), tokenizer, config)


def weights_file(run_dir: str | Path) -> Path:
    """The file holding a run's weights: model.safetensors, or an hf run's adapter or model."""
    from kefu.models.hf import MODEL, adapter_weights

    run_dir = Path(run_dir)
    for path in (run_dir / WEIGHTS, adapter_weights(run_dir), run_dir / MODEL / WEIGHTS):
        if path.is_file():
            return path
    raise KefuError(
        f"{run_dir}: no weights here ({WEIGHTS}, or an hf run's adapter/ or model/); the run did "
        "not finish saving"
    )
