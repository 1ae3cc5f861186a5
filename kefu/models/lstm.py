"""A recurrent language model: embedding, n-layer LSTM (or GRU), dropout, output projection.

    ids ─ embed ─ dropout ─► LSTM/GRU × n_layer ─ dropout ─► (project to d_embed) ─► lm_head ─► logits

It carries its state from token to token, so decoding needs no cache of the past: the "cache" is
the recurrent state. Prompts of different lengths are run one by one through the network (no
padding ever enters the state) and then decoded together as a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from kefu.config import StrictModel


class LSTMConfig(StrictModel):
    """The shape of a recurrent language model."""

    vocab_size: int = Field(
        8000, ge=1, description="Tokens in the vocabulary (from the tokenizer)."
    )
    context_length: int = Field(256, ge=1, description="Sequence length used in training.")
    cell: Literal["lstm", "gru"] = Field("lstm", description="Recurrent cell.")
    n_layer: int = Field(2, ge=1, description="Stacked recurrent layers.")
    d_embed: int = Field(256, ge=8, description="Width of the token embedding.")
    d_hidden: int = Field(512, ge=8, description="Width of the recurrent state.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout between layers (training only).")
    tie_embeddings: bool = Field(True, description="Share the input embedding and output matrix.")


@dataclass
class RecurrentState:
    """The recurrent state of every layer for a batch: (h, c) for an LSTM, h for a GRU."""

    hidden: Tensor | tuple[Tensor, Tensor]


class RecurrentLM(nn.Module):
    """The kefu LSTM/GRU language model, with the same interface as the GPT."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_embed)
        rnn = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn(
            config.d_embed,
            config.d_hidden,
            num_layers=config.n_layer,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(config.dropout)
        # Tying needs the output to be as wide as the embedding; project down when it is not.
        self.project = (
            nn.Linear(config.d_hidden, config.d_embed, bias=False)
            if config.tie_embeddings and config.d_hidden != config.d_embed
            else None
        )
        out_width = config.d_embed if config.tie_embeddings else config.d_hidden
        self.lm_head = nn.Linear(out_width, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: Tensor, state: RecurrentState | None = None) -> Tensor:
        """Logits (B, T, vocab) for ids (B, T); `state`, when given, is read and updated in place."""
        x = self.drop(self.embed(ids))
        y, hidden = self.rnn(x, state.hidden if state is not None else None)
        if state is not None:
            state.hidden = hidden
        y = self.drop(y)
        if self.project is not None:
            y = self.project(y)
        return self.lm_head(y)

    @torch.no_grad()
    def prefill(
        self, prompts: list[list[int]], max_new_tokens: int
    ) -> tuple[Tensor, RecurrentState]:
        """Run each prompt on its own and stack the states: last logits (B, vocab) and the state."""
        del max_new_tokens  # a recurrent state has no length limit
        device = self.embed.weight.device
        logits, states = [], []
        for prompt in prompts:
            state = RecurrentState(None)  # type: ignore[arg-type]
            out = self.forward(torch.tensor([prompt], device=device), state)
            logits.append(out[:, -1])
            states.append(state.hidden)
        if isinstance(states[0], tuple):
            hidden: Tensor | tuple[Tensor, Tensor] = (
                torch.cat([h for h, _ in states], dim=1),
                torch.cat([c for _, c in states], dim=1),
            )
        else:
            hidden = torch.cat(states, dim=1)
        return torch.cat(logits), RecurrentState(hidden)

    @torch.no_grad()
    def decode(self, ids: Tensor, state: RecurrentState) -> Tensor:
        """Logits (B, vocab) of the next token after one token per sequence, ids (B,)."""
        return self.forward(ids[:, None], state)[:, -1]
