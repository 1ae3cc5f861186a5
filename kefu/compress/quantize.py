"""int8 quantization of a trained run into a new run folder that loads, evaluates and serves as before.

    runs/<run>/ ─ load_run ─► fp32 model ─ METHODS[method] (in place) ─► int8 model ─┐
                                                                                     ▼
    runs/<out>/  model.safetensors: int8 weights with their scales, as plain tensors
                 config.yaml: the source config + `quantized: {method, source}`
                 tokenizer.json, metrics.jsonl: copied
    load_run(out) ─ build the fp32 model ─ the same method on it ─ fill in the stored int8 ─► the
                    same model, logit for logit

Two methods, because the CPU decides what int8 buys:

- `int8-dynamic`: every Linear, LSTM and GRU layer computes in int8 with fbgemm's dynamic
  kernels (weights int8 per output channel; each layer input quantized on the fly, with one
  scale for the whole batch, so in a batch a row's logits move slightly with its neighbours':
  the engine's replies equal solo ones only where the model is not torn between tokens). A GPT's
  output layer is untied from its embedding so that it becomes int8 too (it is 1/3 of a small
  GPT's arithmetic); the embedding is a lookup, not arithmetic, so it is only rounded to int8
  per row for the file and looked up in float. The fast path: at batch 1 one int8 product of a
  d × 4d weight is ~2x faster than fp32 at d=512 and ~4x at d=768 on an AVX-512 CPU.
- `int8-weight`: every weight matrix (embedding included; tied ones stay tied) rounded to int8
  with one scale per output row; activations stay float. On this CPU no weight-only kernel is
  faster than fp32 (measured at batch 1, d × 4d, one thread: fp32 121 µs at d=512, converting
  the int8 weight to float in each call 216 µs, `aten._weight_int8pack_mm` 1285 µs), so the
  weights are dequantized when the run loads: the file is ~4x smaller, the model in memory and
  its speed are fp32's, and its error is weight rounding alone (the smallest of the two).

`quantize` and `load_quantized` take any module (a GPT, an LSTM, an intent network): what a
method does depends on the layer types it finds, not on the model. `quantize_run` takes GPT and
LSTM run folders.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.ao.nn.quantized.dynamic as dynamic
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kefu.errors import KefuError
from kefu.files import replaced_atomically, replaced_folder, write_text_atomically

# -- weight-only int8: symmetric, one scale per output row -------------------------------------


def round_to_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """int8 values (same shape) and float32 scales (one per row, dim 0) of a weight.

    Symmetric: a row's largest magnitude becomes ±127, zero stays exactly zero.
    """
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    scale = rows.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    values = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values.reshape(weight.shape), scale


def from_int8(values: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The float weight that int8 `values` and per-row `scale` stand for."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    return (values.float() * scale.reshape(shape)).to(dtype)


def _named_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Float parameters and persistent buffers by state-dict name, each shared tensor once (the
    tied embedding and output matrix of a GPT are one tensor), dynamic int8 layers left out."""
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    packed = tuple(_dynamic_layers(model))  # their weights are read by `_dynamic_tensors`
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.startswith(packed) or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        tensors[name] = tensor
    return tensors


def _is_matrix(tensor: Tensor) -> bool:
    return tensor.is_floating_point() and tensor.dim() >= 2


@torch.no_grad()
def _round_weights(model: nn.Module, keep: Callable[[str], bool]) -> dict[str, Tensor]:
    """Round every float weight matrix of `model` that `keep` does not keep to int8, in place
    (the model holds the dequantized values); the file tensors: int8 + `.scale`, or as is."""
    stored: dict[str, Tensor] = {}
    for name, tensor in _named_tensors(model).items():
        if _is_matrix(tensor) and not keep(name):
            values, scale = round_to_int8(tensor)
            tensor.copy_(from_int8(values, scale, tensor.dtype))
            stored[name], stored[f"{name}.scale"] = values, scale
        else:
            stored[name] = tensor.detach()
    return stored


@torch.no_grad()
def _fill(model: nn.Module, stored: dict[str, Tensor], where: Path) -> set[str]:
    """Copy stored plain tensors (dequantizing int8 ones) into `model`; the names used."""
    used = set()
    for name, tensor in _named_tensors(model).items():
        if name not in stored:
            raise KefuError(f"{where} has no tensor {name!r}; it is not this model's quantized run")
        value = stored[name]
        if value.dtype == torch.int8:
            value = from_int8(value, stored[f"{name}.scale"], tensor.dtype)
            used.add(f"{name}.scale")
        if value.shape != tensor.shape:
            raise KefuError(
                f"{where}: {name!r} has shape {tuple(value.shape)}, the model {tuple(tensor.shape)}"
            )
        tensor.copy_(value)
        used.add(name)
    return used


# -- dynamic int8: the torch.ao backend -----------------------------------------------------
# Everything that touches PyTorch's eager-mode quantization is in this section, so that moving
# to its successor (torchao) means rewriting the functions of this section and nothing else.

DYNAMIC_LAYERS = (dynamic.Linear, dynamic.LSTM, dynamic.GRU)


@contextlib.contextmanager
def _deprecated_ao() -> Iterator[None]:
    """Silence the deprecation notices of torch.ao.quantization, and only those: we use it on
    purpose, in this section only, as the one eager int8 CPU path in PyTorch 2.13 itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, .* deprecated")
        yield


def _quantize_dynamic(model: nn.Module) -> None:
    """Swap every Linear (per-channel int8) and LSTM/GRU (per-tensor int8) layer of `model`
    for fbgemm's dynamic int8 layer, in place."""
    with _deprecated_ao():
        from torch.ao.quantization import (
            default_dynamic_qconfig,
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )

        layers = {
            nn.Linear: per_channel_dynamic_qconfig,
            nn.LSTM: default_dynamic_qconfig,
            nn.GRU: default_dynamic_qconfig,
        }
        quantize_dynamic(model, layers, dtype=torch.qint8, inplace=True)


def _dynamic_tensors(prefix: str, layer: nn.Module) -> dict[str, Tensor]:
    """A dynamic int8 layer's weights as plain tensors: int8 values, `.scale`, `.zero_point`
    (per output channel or per tensor), and its float biases."""
    if isinstance(layer, dynamic.Linear):
        weights, biases = {"weight": layer.weight()}, {"bias": layer.bias()}
    else:
        weights, biases = layer.get_weight(), layer.get_bias()
    stored = {}
    for name, weight in weights.items():
        key = f"{prefix}{name}"
        stored[key] = weight.int_repr()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            if weight.q_per_channel_axis() != 0:
                raise ValueError(f"{key}: int8 channels must be rows (axis 0)")
            stored[f"{key}.scale"] = weight.q_per_channel_scales()
            stored[f"{key}.zero_point"] = weight.q_per_channel_zero_points()
        else:
            stored[f"{key}.scale"] = torch.tensor(weight.q_scale(), dtype=torch.float64)
            stored[f"{key}.zero_point"] = torch.tensor(weight.q_zero_point())
    stored.update({f"{prefix}{n}": b.detach() for n, b in biases.items() if b is not None})
    return stored


def _set_dynamic(prefix: str, layer: nn.Module, stored: dict[str, Tensor]) -> set[str]:
    """Give a dynamic int8 layer the weights `_dynamic_tensors` stored; the names used."""

    def weight(name: str) -> Tensor:
        key = f"{prefix}{name}"
        values, scale, zero_point = (
            stored[key],
            stored[f"{key}.scale"],
            stored[f"{key}.zero_point"],
        )
        used.update((key, f"{key}.scale", f"{key}.zero_point"))
        if scale.dim() == 0:
            return torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero_point))
        return torch._make_per_channel_quantized_tensor(values, scale, zero_point, 0)

    def bias(name: str) -> Tensor | None:
        used.add(f"{prefix}{name}")
        return stored.get(f"{prefix}{name}")

    used: set[str] = set()
    if isinstance(layer, dynamic.Linear):
        layer.set_weight_bias(weight("weight"), bias("bias"))
    else:
        names = layer.get_weight().keys() | layer.get_bias().keys()
        layer.set_weight_bias({n: weight(n) if n.startswith("weight") else bias(n) for n in names})
    return used


# -- the methods ----------------------------------------------------------------------------


def _untie_linears(model: nn.Module) -> None:
    """Give every Linear layer that shares its weight (a tied output layer) a copy of its own."""
    counts: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        counts[id(parameter)] = counts.get(id(parameter), 0) + 1
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and counts[id(layer.weight)] > 1:
            layer.weight = nn.Parameter(layer.weight.detach().clone())


def _dynamic_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        f"{name}.": layer
        for name, layer in model.named_modules()
        if isinstance(layer, DYNAMIC_LAYERS)
    }


def _int8_dynamic(model: nn.Module) -> dict[str, Tensor]:
    _untie_linears(model)
    _quantize_dynamic(model)
    # What is left in float: embeddings (rounded to int8 for the file), norms, biases, convolutions.
    layers = _dynamic_layers(model)
    stored = _round_weights(model, keep=lambda name: not _is_embedding(model, name))
    for prefix, layer in layers.items():
        stored.update(_dynamic_tensors(prefix, layer))
    return stored


def _int8_dynamic_load(model: nn.Module, stored: dict[str, Tensor], where: Path) -> set[str]:
    _untie_linears(model)
    _quantize_dynamic(model)  # packs its random weights, replaced below: simple, and ~1 s at most
    used = _fill(model, stored, where)
    for prefix, layer in _dynamic_layers(model).items():
        used |= _set_dynamic(prefix, layer, stored)
    return used


def _is_embedding(model: nn.Module, name: str) -> bool:
    owner, _, _ = name.rpartition(".")
    return isinstance(model.get_submodule(owner), nn.Embedding)


def _int8_weight(model: nn.Module) -> dict[str, Tensor]:
    return _round_weights(model, keep=lambda name: False)


def _int8_weight_load(model: nn.Module, stored: dict[str, Tensor], where: Path) -> set[str]:
    return _fill(model, stored, where)


@dataclass(frozen=True)
class Method:
    """A way to quantize. `quantize` changes a float model in place and returns the tensors a
    run folder stores; `load` does the same to a freshly built model from those tensors and
    returns the names it used."""

    quantize: Callable[[nn.Module], dict[str, Tensor]]
    load: Callable[[nn.Module, dict[str, Tensor], Path], set[str]]
    cpu_only: bool  # fbgemm's dynamic int8 kernels have no GPU version


METHODS: dict[str, Method] = {
    "int8-dynamic": Method(
        _int8_dynamic,
        _int8_dynamic_load,
        cpu_only=True,
    ),
    "int8-weight": Method(
        _int8_weight,
        _int8_weight_load,
        cpu_only=False,
    ),
}


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise KefuError(
            f"unknown quantization method {name!r}; valid methods: {', '.join(METHODS)}"
        )
    return METHODS[name]


def quantize(model: nn.Module, method: str) -> dict[str, Tensor]:
    """Quantize `model` in place (it stays the same object, eval mode); the tensors to store.

    `load_quantized` on a fresh model of the same config and these tensors gives a model with
    the very same outputs.
    """
    chosen = method_named(method)
    model.eval()
    return {name: tensor.contiguous() for name, tensor in chosen.quantize(model).items()}


def load_quantized(
    model: nn.Module, method: str, path: str | Path, device: str | torch.device = "cpu"
) -> nn.Module:
    """A freshly built float model turned into the quantized one stored at `path` (in place),
    on `device`."""
    path = Path(path)
    chosen = method_named(method)
    if chosen.cpu_only and torch.device(device).type != "cpu":
        raise KefuError(
            f"{path.parent} is quantized with {method}, whose int8 kernels run on a CPU only; "
            "load it on the CPU, or quantize the source run with int8-weight"
        )
    try:
        stored = load_file(str(path))
    except FileNotFoundError:
        raise KefuError(f"{path} is missing; the quantized run did not finish saving") from None
    model.eval()
    used = chosen.load(model, stored, path)
    if unused := sorted(set(stored) - used):
        raise KefuError(
            f"{path} holds tensors this model has no place for ({', '.join(unused[:3])}); "
            "the run's config.yaml does not describe its weights"
        )
    return model.to(device)


def parameter_count(model: nn.Module) -> int:
    """Parameters of a model, counting the weights packed inside dynamic int8 layers, which
    `model.parameters()` does not list."""
    count = sum(p.numel() for p in model.parameters())
    for prefix, layer in _dynamic_layers(model).items():
        tensors = _dynamic_tensors(prefix, layer).items()
        count += sum(t.numel() for k, t in tensors if not k.endswith((".scale", ".zero_point")))
    return count


# -- run folders ----------------------------------------------------------------------------


@dataclass
class QuantizedRun:
    """What `quantize_run` wrote, and the weight files' sizes in bytes before and after."""

    path: Path
    method: str
    bytes_before: int
    bytes_after: int


def quantize_run(run_dir: str | Path, method: str, out_dir: str | Path) -> QuantizedRun:
    """Quantize a run folder's model (GPT or LSTM) into a new run folder `out_dir`.

    `load_run(out_dir)` loads it; everything that takes a run (eval, chat, serving) takes it.
    """
    from kefu.models.checkpoint import (
        CONFIG,
        METRICS,
        TOKENIZER,
        WEIGHTS,
        load_run,
        read_run_config,
    )

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    method_named(method)
    if out_dir.resolve() == run_dir.resolve():
        raise KefuError(f"--out must be a new folder, not the run itself ({run_dir})")
    if (run_dir / "config.json").is_file() and not (run_dir / CONFIG).is_file():
        raise KefuError(
            f"{run_dir} is an intent classifier or another config.json model; `kefu compress "
            "quantize` takes GPT and LSTM runs for now (see issue 8)"
        )
    config = read_run_config(run_dir)
    if "quantized" in config:
        raise KefuError(
            f"{run_dir} is already quantized ({config['quantized']['method']}); "
            f"quantize its source, {config['quantized']['source']}"
        )
    if config["arch"] not in ("gpt", "lstm"):
        raise KefuError(
            f"{run_dir}: int8 quantization supports gpt and lstm runs, not {config['arch']!r}"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise KefuError(f"{out_dir} already exists and is not empty; choose a new --out folder")
    run = load_run(run_dir)
    stored = quantize(run.model, method)
    with replaced_folder(out_dir) as staging:
        with replaced_atomically(staging / WEIGHTS) as temporary:
            save_file(stored, str(temporary), metadata={"quantized": method})
        shutil.copy(run_dir / TOKENIZER, staging / TOKENIZER)
        if (run_dir / METRICS).is_file():  # the training history of these weights, for reports
            shutil.copy(run_dir / METRICS, staging / METRICS)
        described: dict[str, Any] = {
            **config,
            "quantized": {"method": method, "source": str(run_dir)},
        }
        write_text_atomically(
            staging / CONFIG, yaml.safe_dump(described, sort_keys=False, allow_unicode=True)
        )
    return QuantizedRun(
        out_dir, method, (run_dir / WEIGHTS).stat().st_size, (out_dir / WEIGHTS).stat().st_size
    )
