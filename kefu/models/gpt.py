"""A decoder-only Transformer laid out like Llama, so a trained kefu GPT exports as `LlamaForCausalLM`.

    ids ─ embed ─► [ RMSNorm ─ attention (RoPE, causal SDPA, GQA) ─ + ─ RMSNorm ─ SwiGLU ─ + ] × n_layer
                 ─► RMSNorm ─► lm_head (tied to embed by default) ─► logits

No biases anywhere. Queries, keys and values come from one fused projection, and the SwiGLU gate
and up projections from another: two big matrix products instead of five small ones, which is
most of what makes this faster than the reference implementation on a CPU. Export splits them
back (kefu.models.hf_export).

Incremental decoding keeps a preallocated key/value cache; prompts of different lengths are
left-padded, with a key mask and positions that start at 0 on each prompt's first real token.

Continuous batching (kefu.infer.engine) uses a `SlotCache` instead: one row per sequence, each
row at its own length, so sequences join and leave between steps without padding:

    prompts ─ prefill together (left-padded KVCache) ─ copy their real tokens ─► free rows ─┐
                                                                                            ▼
    rows 0..n-1 ─ decode_slots: one token per row at its own position ─► logits (n, vocab)
                  (attends over keys[:, :n, :, :longest+1], masked per row)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from kefu.config import StrictModel
from kefu.errors import KefuError


class GPTConfig(StrictModel):
    """The shape of a GPT; every field maps onto a Llama config field."""

    vocab_size: int = Field(
        8000, ge=1, description="Tokens in the vocabulary (from the tokenizer)."
    )
    context_length: int = Field(256, ge=1, description="Longest sequence, in tokens.")
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, description="Attention (query) heads.")
    n_kv_head: int | None = Field(
        None,
        ge=1,
        description="Key/value heads; fewer than n_head is grouped-query attention. Default: n_head.",
    )
    d_model: int = Field(256, ge=8, description="Width of the residual stream.")
    d_head: int | None = Field(
        None,
        ge=2,
        description="Width of one attention head; default d_model / n_head. Structured pruning "
        "keeps the head width while removing heads, so n_head · d_head may differ from d_model.",
    )
    d_hidden: int | None = Field(
        None, ge=1, description="SwiGLU hidden width; default 8/3·d_model rounded up to 64."
    )
    rope_theta: float = Field(10000.0, gt=0, description="Base of the rotary position frequencies.")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and output matrix.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on attention output and MLP (training only)."
    )

    @model_validator(mode="after")
    def _shapes_fit(self) -> GPTConfig:
        if self.d_head is None and self.d_model % self.n_head:
            raise ValueError(
                f"d_model {self.d_model} must be a multiple of n_head {self.n_head} "
                "(or give the head width as d_head)"
            )
        if self.head_dim % 2:
            raise ValueError(
                "the head width (d_head, or d_model / n_head) must be even for rotary embeddings"
            )
        if self.n_head % self.kv_heads:
            raise ValueError(
                f"n_head {self.n_head} must be a multiple of n_kv_head {self.kv_heads}"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_head

    @property
    def hidden(self) -> int:
        return self.d_hidden or 64 * math.ceil(8 * self.d_model / 3 / 64)


def check_room(context_length: int, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise a KefuError if a prompt and its reply may not fit a Transformer's context."""
    if prompt_tokens + max_new_tokens > context_length:
        raise KefuError(
            f"a prompt of {prompt_tokens} tokens plus {max_new_tokens} new tokens exceeds the "
            f"model's context of {context_length} tokens; shorten the prompt or ask for fewer "
            "tokens"
        )


def rotary_tables(config: GPTConfig, length: int) -> tuple[Tensor, Tensor]:
    """cos and sin of every position × frequency, (length, head_dim), as Llama computes them."""
    half = torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim
    inverse_frequency = 1.0 / (config.rope_theta**half)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inverse_frequency)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (i, i + head_dim/2) of x (B, H, T, D) by the angles of their positions."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class KVCache:
    """Keys and values of every layer for `batch` sequences of up to `capacity` tokens.

    `key_mask` (B, capacity) marks real tokens when prompts were left-padded; None means every
    position holds a real token, the fast path.
    """

    def __init__(
        self, config: GPTConfig, batch: int, capacity: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (config.n_layer, batch, config.kv_heads, capacity, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0
        self.key_mask: Tensor | None = None
        self.next_position: Tensor | None = None  # (B,) position of each sequence's next token

    def store(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + keys.shape[2]
        self.keys[layer, :, :, self.length : end] = keys
        self.values[layer, :, :, self.length : end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class SlotCache:
    """Keys and values for up to `slots` sequences that start and stop independently.

    Every sequence owns a row and its own length; none is padded, each starts at position 0 of
    its row. The active ones fill rows 0..active-1 (when one leaves, the last moves into its row)
    so that a step attends over a view of the first rows instead of gathering scattered ones.
    """

    def __init__(
        self, config: GPTConfig, slots: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (config.n_layer, slots, config.kv_heads, config.context_length, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths: list[int] = []  # tokens held by each active row, in row order
        # Where each active row stores its one new token during a step; set by begin_step.
        self.positions = torch.zeros(0, dtype=torch.long, device=device)
        self.span = 0  # keys a step attends over: the longest row, its new token included

    @property
    def active(self) -> int:
        return len(self.lengths)

    @property
    def free(self) -> int:
        return self.keys.shape[1] - self.active

    def add(self, cache: KVCache) -> None:
        """Copy the sequences of a prefilled cache into free rows, in order, without their padding.

        `prefill` left-pads, so a sequence of L tokens holds the last L of the cache's positions;
        its row gets them from position 0 on, as if it had been prefilled alone.
        """
        if cache.next_position is None:
            raise ValueError("only a cache filled by GPT.prefill knows its sequences' lengths")
        lengths = cache.next_position.tolist()
        if len(lengths) > self.free:
            raise ValueError(f"{len(lengths)} sequences do not fit the {self.free} free rows")
        end = cache.length
        for sequence, length in enumerate(lengths):
            row = self.active
            self.keys[:, row, :, :length] = cache.keys[:, sequence, :, end - length : end]
            self.values[:, row, :, :length] = cache.values[:, sequence, :, end - length : end]
            self.lengths.append(length)

    def remove(self, row: int) -> None:
        """Free `row`; the last active row moves into it (so remove several from the last down)."""
        last = self.active - 1
        if row != last:
            length = self.lengths[last]
            self.keys[:, row, :, :length] = self.keys[:, last, :, :length]
            self.values[:, row, :, :length] = self.values[:, last, :, :length]
            self.lengths[row] = length
        self.lengths.pop()

    def begin_step(self) -> Tensor:
        """Positions (active,) of the token each row is about to add: its length."""
        self.positions = torch.tensor(self.lengths, device=self.keys.device)
        self.span = max(self.lengths) + 1
        return self.positions

    def store(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        # keys, values: (active, KV, 1, D), each row's new token, written at that row's position.
        rows = torch.arange(self.active, device=keys.device)
        self.keys[layer][rows, :, self.positions] = keys[:, :, 0]
        self.values[layer][rows, :, self.positions] = values[:, :, 0]
        n, span = self.active, self.span
        return self.keys[layer, :n, :, :span], self.values[layer, :n, :, :span]

    def end_step(self) -> None:
        self.lengths = [length + 1 for length in self.lengths]


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.config = config
        self.layer = layer
        q_width, kv_width = config.n_head * config.head_dim, config.kv_heads * config.head_dim
        self.qkv = nn.Linear(config.d_model, q_width + 2 * kv_width, bias=False)
        self.out = nn.Linear(q_width, config.d_model, bias=False)
        self.split = (q_width, kv_width, kv_width)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | SlotCache | None,
    ) -> Tensor:
        B, T, _ = x.shape
        c = self.config
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(B, T, c.n_head, c.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = v.view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.store(self.layer, k, v)
        # Without a mask: causal over a fresh sequence, or one new token that may see everything.
        causal = mask is None and T > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=c.kv_heads != c.n_head
        )
        y = y.transpose(1, 2).reshape(B, T, c.n_head * c.head_dim)
        return F.dropout(self.out(y), c.dropout, self.training)


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.dropout = config.dropout
        self.gate_up = nn.Linear(config.d_model, 2 * config.hidden, bias=False)
        self.down = nn.Linear(config.hidden, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return F.dropout(self.down(F.silu(gate) * up), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attention = Attention(config, layer)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | SlotCache | None,
    ) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """The kefu GPT. `forward` for training; `prefill` and `decode` for generation."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rotary_tables(config, config.context_length)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Residual projections start smaller so the stream's variance does not grow with depth.
        for name, parameter in self.named_parameters():
            if name.endswith(("attention.out.weight", "mlp.down.weight")):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        ids: Tensor,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits (B, T, vocab) for token ids (B, T), extending `cache` when one is given.

        Args:
            positions: (B, T) position of each token; default: consecutive after the cache.
            last_only: logits of the last position only, (B, 1, vocab). Reading a prompt
                needs no more, and the vocabulary projection is much of its arithmetic.
        """
        T = ids.shape[1]
        past = cache.length if cache is not None else 0
        if past + T > self.config.context_length:
            raise KefuError(
                f"{past + T} tokens do not fit the model's context of {self.config.context_length}; "
                "shorten the input (or the conversation history)"
            )
        if positions is None:
            cos, sin = self.cos[past : past + T], self.sin[past : past + T]  # (T, D), broadcast
        else:
            cos, sin = (
                self.cos[positions].unsqueeze(1),
                self.sin[positions].unsqueeze(1),
            )  # (B, 1, T, D)
        mask = self._mask(cache, T, ids.device) if cache is not None else None
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    def _mask(self, cache: KVCache, T: int, device: torch.device) -> Tensor | None:
        """Boolean (B|1, 1, T, past+T) mask of the keys each new token may attend to, or None."""
        past = cache.length
        if cache.key_mask is None and (T == 1 or past == 0):
            return None  # plain causal, or one token attending to all: SDPA needs no mask
        query = torch.arange(past, past + T, device=device)[:, None]
        key = torch.arange(past + T, device=device)[None, :]
        allowed = (key <= query)[None, None]
        if cache.key_mask is not None:
            # A padding query still attends to itself, so no row of the softmax is empty.
            allowed = allowed & (cache.key_mask[:, None, None, : past + T] | (key == query))
        return allowed

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        parameter = self.embed.weight
        return KVCache(self.config, batch, capacity, parameter.dtype, parameter.device)

    def new_slots(self, slots: int) -> SlotCache:
        parameter = self.embed.weight
        return SlotCache(self.config, slots, parameter.dtype, parameter.device)

    def check_room(self, prompt_tokens: int, max_new_tokens: int) -> None:
        check_room(self.config.context_length, prompt_tokens, max_new_tokens)

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[Tensor, KVCache]:
        """Run the prompts (left-padded to one length) and return their last logits (B, vocab)."""
        longest = max(len(p) for p in prompts)
        self.check_room(longest, max_new_tokens)
        device = self.embed.weight.device
        cache = self.new_cache(len(prompts), longest + max_new_tokens)
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        if bool((lengths == longest).all()):
            positions = None
            cache.next_position = lengths
        else:
            real = torch.arange(longest, device=device)[None, :] >= (longest - lengths)[:, None]
            cache.key_mask = torch.zeros(
                len(prompts), cache.capacity, dtype=torch.bool, device=device
            )
            cache.key_mask[:, :longest] = real
            cache.key_mask[:, longest:] = True
            positions = (real.long().cumsum(-1) - 1).clamp(min=0)
            cache.next_position = lengths
        logits = self.forward(ids, cache, positions, last_only=True)
        return logits[:, -1], cache

    @torch.no_grad()
    def decode(self, ids: Tensor, cache: KVCache) -> Tensor:
        """Logits (B, vocab) of the next token after feeding one token per sequence, ids (B,)."""
        positions = None if cache.key_mask is None else cache.next_position[:, None]
        logits = self.forward(ids[:, None], cache, positions)
        cache.next_position = cache.next_position + 1
        return logits[:, -1]

    @torch.no_grad()
    def prefill_slots(self, prompts: list[list[int]], slots: SlotCache) -> Tensor:
        """Run the prompts in one batch into free rows of `slots`, in order; their last logits
        (len(prompts), vocab). Each row holds what prefilling its prompt alone would put there:
        padding is masked out of attention, and left out of the copy."""
        logits, cache = self.prefill(prompts, max_new_tokens=0)
        slots.add(cache)
        return logits

    @torch.no_grad()
    def decode_slots(self, ids: Tensor, slots: SlotCache) -> Tensor:
        """Logits (active, vocab) after one more token for every active row, ids (active,).

        Each row's token goes at the row's own position and attends only to that row's keys.
        """
        if max(slots.lengths) >= self.config.context_length:
            raise KefuError(
                f"a sequence has filled the model's context of {self.config.context_length} tokens"
            )
        positions = slots.begin_step()  # (n,)
        cos, sin = self.cos[positions][:, None, None], self.sin[positions][:, None, None]
        mask = None  # rows of one length attend to all their keys, SDPA's fast path
        if len(set(slots.lengths)) > 1:
            keys = torch.arange(slots.span, device=ids.device)
            mask = (keys[None, :] <= positions[:, None])[:, None, None]  # (n, 1, 1, span)
        x = self.embed(ids[:, None])  # (n, 1, C)
        for block in self.blocks:
            x = block(x, cos, sin, mask, slots)
        slots.end_step()
        return self.lm_head(self.norm(x))[:, -1]
