"""Training recipes (`kind: train`): what to train, on what, and how, in one YAML file.

A recipe holds a config for each architecture, so one file trains a GPT or an LSTM of about the
same size; `arch:` (or `--arch`) picks which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kefu.config import StrictModel, resolve_path
from kefu.models.gpt import GPTConfig
from kefu.models.hf import LoRASettings
from kefu.models.lstm import LSTMConfig
from kefu.train.loop import TrainConfig


class TrainRecipe(StrictModel):
    """A recipe for `kefu train lm` and `kefu train chat`."""

    kind: Literal["train"]
    task: Literal["lm", "chat"] = Field(
        description="lm: all text, packed; chat: loss on assistant replies only."
    )
    arch: Literal["gpt", "lstm"] = Field("gpt", description="Which architecture to train.")
    gpt: GPTConfig = Field(
        default_factory=GPTConfig,
        description="The GPT's shape (vocab_size comes from the tokenizer).",
    )
    lstm: LSTMConfig = Field(
        default_factory=LSTMConfig,
        description="The LSTM's shape (vocab_size comes from the tokenizer).",
    )
    base: str | None = Field(
        None,
        description="A Hugging Face causal LM (model folder, full hf run or hub id) to fine-tune "
        "instead of training `arch` from scratch (or --base).",
    )
    lora: LoRASettings | None = Field(
        None, description="With base: train only LoRA adapters of these settings (or --lora)."
    )
    data: str | None = Field(None, description="Data folder from `kefu data ingest` (or --data).")
    tokenizer: str | None = Field(
        None, description="tokenizer.json to use; none: train one on the data."
    )
    tokenizer_vocab_size: int = Field(
        8000, ge=300, description="Vocabulary of the tokenizer trained when none is given."
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Optimizer, schedule, evaluation."
    )

    @field_validator("data", "tokenizer")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_path(value, info)

    @field_validator("base")
    @classmethod
    def _resolve_base(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A folder beside the recipe is anchored there; anything else may be a hub id."""
        if value is None:
            return None
        anchored = resolve_path(value, info)
        return anchored if Path(anchored).exists() else value

    @model_validator(mode="after")
    def _lora_needs_base(self) -> TrainRecipe:
        if self.lora is not None and self.base is None:
            raise ValueError("lora: LoRA adapters need a Hugging Face model to adapt; set base")
        return self
