"""Model architectures, by the name a recipe gives in `arch:`.

Every language model has the same face, `LanguageModel`: `forward` for training, `prefill` and
`decode` for generation. What differs between them lives in their config, not in `if arch == ...`.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from kefu.config import StrictModel
from kefu.errors import KefuError
from kefu.models.gpt import GPT, GPTConfig
from kefu.models.lstm import LSTMConfig, RecurrentLM


class LanguageModel(Protocol):
    config: Any

    def __call__(self, ids: Tensor) -> Tensor:
        """Logits (B, T, vocab) for ids (B, T)."""
        ...

    def prefill(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[Tensor, Any]:
        """Last logits (B, vocab) of each prompt and the state to decode from."""
        ...

    def decode(self, ids: Tensor, state: Any) -> Tensor:
        """Logits (B, vocab) after one more token per sequence."""
        ...

    def num_parameters(self) -> int: ...


MODELS: dict[str, tuple[type[StrictModel], type[nn.Module]]] = {
    "gpt": (GPTConfig, GPT),
    "lstm": (LSTMConfig, RecurrentLM),
}


def model_config(arch: str, fields: dict[str, Any]) -> StrictModel:
    """The typed config of architecture `arch` from plain fields."""
    if arch not in MODELS:
        raise KefuError(f"unknown architecture {arch!r}; valid architectures: {', '.join(MODELS)}")
    return MODELS[arch][0].model_validate(fields)


def build_model(arch: str, config: StrictModel) -> nn.Module:
    """A freshly initialised model of architecture `arch`."""
    return MODELS[arch][1](config)
