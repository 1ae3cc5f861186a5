"""TextCNN (Kim 2014): the classic small, fast text classifier, trained from scratch.

    ids ─ embed ─► Conv1d (widths 2, 3, 4, 5) ─ ReLU ─ max over time (padding excluded)
                 ─► concat ─ dropout ─► linear ─► logits over the labels

It reads kefu's byte-level tokens, so it works for Chinese and mixed text as well as English,
where the MiniLM encoder is English only.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from kefu.config import StrictModel


class TextCNNConfig(StrictModel):
    """The shape of a TextCNN."""

    vocab_size: int = Field(
        4000, ge=1, description="Tokens in the vocabulary (from the tokenizer)."
    )
    labels: int = Field(2, ge=2, description="Number of classes.")
    d_embed: int = Field(128, ge=8, description="Width of the token embedding.")
    widths: list[int] = Field(
        [2, 3, 4, 5], min_length=1, description="Convolution widths, in tokens."
    )
    filters: int = Field(128, ge=1, description="Filters per width.")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout before the output layer.")
    max_length: int = Field(64, ge=8, description="Tokens kept per text.")
    pad_id: int = Field(0, ge=0, description="Token id of padding.")


class TextCNN(nn.Module):
    def __init__(self, config: TextCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_embed, padding_idx=config.pad_id)
        self.convs = nn.ModuleList(
            nn.Conv1d(config.d_embed, config.filters, w) for w in config.widths
        )
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.filters * len(config.widths), config.labels)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: Tensor) -> Tensor:
        """Logits (B, labels) for padded token ids (B, T)."""
        # Texts shorter than the widest filter still get one full window.
        if ids.shape[1] < max(self.config.widths):
            ids = nn.functional.pad(
                ids, (0, max(self.config.widths) - ids.shape[1]), value=self.config.pad_id
            )
        x = self.embed(ids).transpose(1, 2)  # (B, C, T)
        real = ids != self.config.pad_id
        pooled = []
        for conv in self.convs:
            y = torch.relu(conv(x))  # (B, filters, T - width + 1)
            # A window that starts on padding is not part of the text: it cannot win the max.
            starts = real[:, : y.shape[2]].unsqueeze(1)
            pooled.append(y.masked_fill(~starts, float("-inf")).amax(dim=2).clamp(min=0))
        return self.out(self.drop(torch.cat(pooled, dim=1)))
