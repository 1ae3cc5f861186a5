"""Hugging Face causal language models behind kefu's `LanguageModel` face, with LoRA through peft.

Any `AutoModelForCausalLM` folder (or a hub id when online) trains, evaluates, chats and serves
wherever kefu's own GPT does:

    HFCausalLM        forward(ids) -> logits; prefill/decode over the model's own KV cache
    HFChatTokenizer   the ChatTokenizer face over a transformers tokenizer and its chat template

A run folder of this backend (`arch: hf` in config.yaml) holds

runs/<name>/
  config.yaml      arch: hf; model: the base (folder or hub id), its fingerprint, the LoRA settings
  adapter/         LoRA runs: only the adapter (peft `save_pretrained`), a fraction of the base
  model/           full fine-tunes and merged runs: the whole model (`save_pretrained`)
  tokenizer/       the tokenizer files (`save_pretrained`)
  metrics.jsonl, checkpoint/   as for every run

A LoRA run needs its base. The base's fingerprint (a hash of its tensor names, shapes and a
sample of every tensor's values) is recorded in the run, so an adapter loaded onto another model
fails with a clear error instead of answering nonsense.

Several adapters share one loaded base: `load_adapter(run, name)` adds one, `use_adapter(name)`
picks which answers (None: the plain base). Picking only flips flags on the LoRA layers (no
weights move), so it costs about a millisecond even on a 7B model; but it changes the model for
every caller, so callers must hold one lock around "pick the adapter, then generate" (or pick
it again before every decoding step, under the lock that serialises the steps).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import Field
from torch import Tensor, nn

from kefu import __version__
from kefu.config import StrictModel
from kefu.console import quiet_transformers
from kefu.errors import KefuError
from kefu.files import replaced_folder, write_text_atomically
from kefu.models.gpt import check_room
from kefu.text.tokenizer import Rendered

ARCH = "hf"
ADAPTER, MODEL, TOKENIZER = "adapter", "model", "tokenizer"
# Longest training sequence for a Hugging Face model (its context when shorter): pretrained
# contexts run to 128k tokens, and `train lm` windows that long would not fit in memory.
TRAIN_BLOCK = 2048


class LoRASettings(StrictModel):
    """Low-rank adapters on some linear layers of a frozen base (`--lora rank,alpha,targets`)."""

    rank: int = Field(ge=1, description="Rank r of each adapter's A (r x in) and B (out x r).")
    alpha: float = Field(gt=0, description="Scale: the update B·A is multiplied by alpha / rank.")
    targets: list[str] | None = Field(
        None,
        description="Names of the layers to adapt (e.g. q_proj, v_proj); none: peft's default "
        "for the model type (Llama: q_proj, v_proj; GPT-2: c_attn).",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")

    @classmethod
    def parse(cls, text: str) -> LoRASettings:
        """`rank,alpha[,target,...]`, as given to `--lora` (e.g. `8,16,q_proj,v_proj`)."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            rank, alpha = int(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise KefuError(
                f"--lora {text!r}: expected rank,alpha[,targets...], e.g. 8,16,q_proj,v_proj"
            ) from None
        try:
            return cls(rank=rank, alpha=alpha, targets=parts[2:] or None)
        except ValueError as err:  # pydantic: a rank below 1, an alpha of 0
            problem = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in err.errors())
            raise KefuError(f"--lora {text!r}: {problem}") from None


class HFConfig(StrictModel):
    """The `model:` section of an hf run's config.yaml."""

    base: str = Field(description="The Hugging Face model (folder or hub id) the run started from.")
    base_fingerprint: str = Field(description="`fingerprint` of that base, checked on load.")
    lora: LoRASettings | None = Field(None, description="LoRA settings; none: all weights train.")
    context_length: int = Field(ge=1, description="Most tokens the model sees at once.")
    vocab_size: int = Field(ge=1, description="Rows of the model's embedding.")
    merged_from: str | None = Field(None, description="The LoRA run a merged model came from.")


def fingerprint(model: nn.Module) -> str:
    """A short hash that tells one set of weights from another, cheap even for a 7B model.

    It covers every tensor's name and shape and an evenly spaced sample of at most 4,096 of its
    values, rounded to bf16 so that loading the same checkpoint in fp32 or bf16 gives one hash.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        if tensor.is_meta:  # a model not yet materialised: only its shapes tell
            continue
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096]
        digest.update(sample.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _context_length(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise KefuError(
        f"cannot tell the context length of this {config.model_type} model: its config has none "
        "of max_position_embeddings, n_positions, max_sequence_length"
    )


@contextlib.contextmanager
def _peft_calls() -> Iterator[None]:
    """peft 0.21 asks transformers 5 whether gradient checkpointing is on by a deprecated name."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        yield


@dataclass
class HFState:
    """What `decode` continues from: the HF KV cache, the attention mask, the next positions."""

    cache: Any
    mask: Tensor  # (B, tokens so far): 0 on the left padding
    next_position: Tensor  # (B,)


class HFCausalLM(nn.Module):
    """A transformers causal LM (optionally with LoRA adapters) with kefu's LanguageModel face.

    Args:
        model: the loaded `AutoModelForCausalLM` (no adapters yet).
        base: the folder or hub id it came from, recorded in runs trained from it.
    """

    def __init__(self, model: nn.Module, base: str) -> None:
        super().__init__()
        self.model = model  # becomes a peft.PeftModel once adapters are added
        self.fingerprint = fingerprint(model)
        self.config = HFConfig(
            base=base,
            base_fingerprint=self.fingerprint,
            context_length=_context_length(model.config),
            vocab_size=model.get_input_embeddings().num_embeddings,
        )
        self.active_adapter: str | None = None
        # What answers when a caller asks for no adapter in particular: a LoRA run's own.
        self.default_adapter: str | None = None
        self._lora_layers: list[Any] = []  # peft's LoRA layers, whose flags pick the adapter

    # -- the LanguageModel face ------------------------------------------------------------
    def forward(self, ids: Tensor) -> Tensor:
        """Logits (B, T, vocab) for ids (B, T), right padding allowed (attention is causal)."""
        return self.model(input_ids=ids, use_cache=False).logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def check_room(self, prompt_tokens: int, max_new_tokens: int) -> None:
        check_room(self.config.context_length, prompt_tokens, max_new_tokens)

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[Tensor, HFState]:
        """Run the prompts, left-padded to one length, and return their last logits (B, vocab).

        Padding is masked out of attention and positions count only real tokens, so each row
        gets the logits its prompt alone would get.
        """
        longest = max(len(p) for p in prompts)
        self.check_room(longest, max_new_tokens)
        device = self.model.get_input_embeddings().weight.device
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor(
            [[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        state = HFState(out.cache, mask, positions[:, -1] + 1)
        return out.logits[:, -1], state

    @torch.no_grad()
    def decode(self, ids: Tensor, state: HFState) -> Tensor:
        """Logits (B, vocab) after one more token per sequence, ids (B,) or (B, 1)."""
        ids = ids.reshape(-1, 1)
        state.mask = torch.cat([state.mask, torch.ones_like(ids)], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=state.mask,
            position_ids=state.next_position[:, None],
            cache=state.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        state.cache = out.cache
        state.next_position = state.next_position + 1
        return out.logits[:, -1]

    # -- LoRA ------------------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The transformers model under the adapters (the LoRA layers wrap its Linears)."""
        return self.model.get_base_model() if self.has_adapters else self.model

    @property
    def has_adapters(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters loaded on this base."""
        return list(self.model.peft_config) if self.has_adapters else []

    def add_lora(self, settings: LoRASettings) -> None:
        """Freeze the base and add a fresh, trainable adapter named "default" (for training)."""
        from peft import LoraConfig, get_peft_model

        if self.has_adapters:
            raise KefuError("this model already has adapters; train a new one on a plain base")
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            target_modules=settings.targets,
            lora_dropout=settings.dropout,
            task_type="CAUSAL_LM",
        )
        try:
            with _peft_calls():
                self.model = get_peft_model(self.model, config)
        except ValueError as err:  # peft: target modules not found in the base model
            raise KefuError(f"cannot add LoRA to {self.config.base}: {err}") from None
        self._find_lora_layers()
        self._keep_only_the_adapter_in_state_dicts()
        targets = sorted(self.model.peft_config["default"].target_modules)
        self.config = self.config.model_copy(
            update={"lora": settings.model_copy(update={"targets": targets})}
        )
        self.active_adapter = "default"

    def _keep_only_the_adapter_in_state_dicts(self) -> None:
        """A LoRA model's state is its adapter: the training loop's checkpoints leave the frozen
        base out (megabytes instead of a 7B base's 28 GB per save); resuming reloads the base."""
        adapter = {name for name, p in self.named_parameters() if p.requires_grad}

        def drop_the_base(module: nn.Module, state: dict, prefix: str, metadata: Any) -> None:
            for key in [k for k in state if k.startswith(prefix)]:
                if key[len(prefix) :] not in adapter:
                    del state[key]

        def the_base_is_not_missing(module: nn.Module, incompatible: Any) -> None:
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k in adapter]

        self.register_state_dict_post_hook(drop_the_base)
        self.register_load_state_dict_post_hook(the_base_is_not_missing)

    def load_adapter(self, folder: str | Path, name: str) -> None:
        """Load a LoRA adapter (an hf LoRA run folder, or a peft adapter folder) as `name`.

        It does not change which adapter is in use; call `use_adapter(name)` for that.
        """
        from peft import PeftConfig, PeftModel

        folder = Path(folder)
        if name in self.adapters:
            raise KefuError(f"an adapter named {name!r} is already loaded on {self.config.base}")
        source = folder / ADAPTER if (folder / ADAPTER).is_dir() else folder
        recorded = _adapter_run_config(folder)
        if recorded is not None and recorded.base_fingerprint != self.fingerprint:
            raise KefuError(
                f"the adapter {folder} was trained on {recorded.base} (fingerprint "
                f"{recorded.base_fingerprint}), but this model is {self.config.base} (fingerprint "
                f"{self.fingerprint}); load it onto the base it was trained on"
            )
        try:
            config = PeftConfig.from_pretrained(str(source))
        except (OSError, ValueError) as err:
            raise KefuError(
                f"{folder} is not a LoRA adapter (no readable adapter_config.json): {err}"
            ) from None
        config.inference_mode = True
        peft_model = self.model if self.has_adapters else None
        try:
            with _peft_calls():
                if peft_model is None:
                    peft_model = PeftModel(self.model, config, adapter_name=name)
                peft_model.load_adapter(str(source), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as err:
            self._drop_failed_adapter(peft_model, name)
            detail = re.sub(r"\s+", " ", str(err))[:400]
            raise KefuError(
                f"the adapter {folder} does not fit {self.config.base}: {detail}; "
                "it was trained on another base model"
            ) from None
        self.model = peft_model.train(self.training)  # peft switches to eval mode; keep ours
        self._find_lora_layers()
        self.use_adapter(self.active_adapter)

    def _find_lora_layers(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._lora_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]

    def _drop_failed_adapter(self, peft_model: Any, name: str) -> None:
        if peft_model is None:
            return
        if peft_model is not self.model:  # the first adapter: take its layers out of the base
            self.model = peft_model.unload()
        elif name in peft_model.peft_config:
            peft_model.delete_adapter(name)
        self._find_lora_layers()

    def use_adapter(self, name: str | None) -> None:
        """Answer with adapter `name` from now on; None: with the plain base.

        Only flags on the LoRA layers change (no weights move, nothing is loaded).
        """
        if name is not None and name not in self.adapters:
            loaded = ", ".join(self.adapters) or "none"
            raise KefuError(f"no adapter named {name!r} is loaded (loaded: {loaded})")
        # peft's own set_adapter walks every module and re-flags requires_grad: about 100 ms per
        # switch on a Llama-2-7B shape with LoRA on every linear layer (30 ms on q_proj, v_proj).
        # Setting the two flags each LoRA layer reads in its forward takes about 1 ms there
        # (test_on_a_7b_base_adapters_are_small_and_switch_fast), and the tests check the logits.
        for layer in self._lora_layers:
            layer._disable_adapters = name is None
            if name is not None:
                layer._active_adapter = name
        if name is not None:
            self.model.base_model.active_adapter = name
        self.active_adapter = name

    def merged(self) -> nn.Module:
        """The base with the adapter in use folded into its weights (B·A·alpha/r added)."""
        if self.active_adapter is None:
            raise KefuError("no adapter in use to merge; load one and pick it with use_adapter")
        return self.model.merge_and_unload(adapter_names=[self.active_adapter])


def adapter_weights(folder: str | Path) -> Path:
    """The weights file of an adapter: of a LoRA run folder, or of a peft adapter folder."""
    folder = Path(folder)
    source = folder / ADAPTER if (folder / ADAPTER).is_dir() else folder
    return source / "adapter_model.safetensors"


def _adapter_run_config(folder: Path) -> HFConfig | None:
    """The recorded model config of a LoRA run folder; None for a plain peft adapter folder."""
    if not (folder / "config.yaml").is_file():
        return None
    config = read_hf_run_config(folder)
    if config.lora is None:
        raise KefuError(f"{folder} is a full-model run, not a LoRA adapter run")
    return config


# -- the tokenizer -----------------------------------------------------------------------

# Without a chat template (GPT-2 and other plain LMs) a conversation renders as
#     system: …<eos>user: …<eos>assistant: …<eos>
# and a generation prompt ends with "assistant:". The eos token ends every turn, so a reply
# stops where it does. Message text is encoded with special tokens as plain text.
FALLBACK_FORMAT = "{role}: {content}<eos>"


class HFChatTokenizer:
    """The `ChatTokenizer` face (render, encode, decode, ids of the control tokens) over a
    transformers tokenizer.

    With a chat template, conversations render with it; the assistant mask comes from its
    `{% generation %}` blocks, or else from rendering each conversation up to every reply
    (the reply is what rendering it adds). Templates render text before tokenizing, so
    control tokens typed inside a message become control tokens. Without a template, see
    FALLBACK_FORMAT.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.hf = tokenizer
        # The tokenizers.Tokenizer underneath (fast tokenizers), as ChatTokenizer.tokenizer.
        self.tokenizer = getattr(tokenizer, "backend_tokenizer", None)
        self.templated = bool(tokenizer.chat_template)
        # {% generation %} blocks mark the replies; without them, rendering prefixes does.
        self.marks_generation = self.templated and bool(
            re.search(r"{%-?\s*generation\s*-?%}", tokenizer.chat_template)
        )
        eos = tokenizer.eos_token_id
        if eos is None and not self.templated:
            raise KefuError(
                "the tokenizer has neither a chat template nor an eos token to end a turn with; "
                "give it a chat template (tokenizer_config.json) or an eos_token"
            )
        self.end_of_turn_id = self._end_of_turn() if self.templated else eos
        self.end_of_text_id = eos if eos is not None else self.end_of_turn_id
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_of_text_id
        # Tokens that start a turn, where a long conversation is best cut (see truncate_left).
        self.role_ids: dict[str, int] = (
            {}
            if self.templated
            else {r: self.encode(f"{r}:")[0] for r in ("system", "user", "assistant")}
        )

    @classmethod
    def load(cls, path: str | Path) -> HFChatTokenizer:
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                return cls(AutoTokenizer.from_pretrained(str(path)))
        except (OSError, ValueError) as err:
            raise KefuError(f"{path}: cannot load the Hugging Face tokenizer ({err})") from None

    def save(self, folder: str | Path) -> None:
        self.hf.save_pretrained(str(folder))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def base_size(self) -> int:
        return self.hf.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def tokens(self, text: str) -> list[str]:
        return [self.decode([i]) for i in self.encode(text)]

    def render(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> Rendered:
        """Token ids and assistant mask (1 on each reply and the tokens that end it)."""
        if not self.templated:
            return self._render_plain(messages, add_generation_prompt)
        if self.marks_generation:
            try:
                rendered = self.hf.apply_chat_template(
                    messages,
                    add_generation_prompt=add_generation_prompt,
                    return_dict=True,
                    return_assistant_tokens_mask=True,
                )
            except Exception as err:  # jinja2's TemplateError and the template's raise_exception
                raise KefuError(
                    f"the model's chat template cannot render this conversation: {err}"
                ) from None
            return Rendered(list(rendered["input_ids"]), list(rendered["assistant_masks"]))
        text = self._template(messages, add_generation_prompt)
        # A prompt's mask is never used: skip rendering its prefixes.
        spans = [] if add_generation_prompt else self._reply_spans(messages, text)
        encoded = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = [
            int(any(start <= first < end for start, end in spans))
            for first, _ in encoded["offset_mapping"]
        ]
        return Rendered(encoded["input_ids"], mask)

    def _template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return self.hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as err:  # jinja2's TemplateError and the template's raise_exception
            raise KefuError(
                f"the model's chat template cannot render this conversation: {err}"
            ) from None

    def _reply_spans(self, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
        """Character spans of `text` (the rendered conversation) that the assistant wrote:
        what rendering the conversation through each reply adds to rendering it up to there."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._template(messages[:index], add_generation_prompt=True)
            through = self._template(messages[: index + 1], add_generation_prompt=False)
            if not (text.startswith(before) and text.startswith(through)):
                raise KefuError(
                    "the model's chat template renders a conversation differently from its "
                    "beginning, so the assistant's replies cannot be told apart; give the "
                    "template {% generation %} blocks"
                )
            spans.append((len(before), len(through)))
        return spans

    def _end_of_turn(self) -> int:
        """The token a reply ends with: the first control token the template puts after it."""
        probe = "kefu probe reply"
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
        text = self._template(messages, add_generation_prompt=False)
        after = text[text.rindex(probe) + len(probe) :]
        special = set(self.hf.all_special_ids) | set(self.hf.added_tokens_decoder)
        for token in self.hf(after, add_special_tokens=False)["input_ids"]:
            if token in special:
                return token
        if self.hf.eos_token_id is None:
            raise KefuError(
                "the chat template ends a reply with no control token and the tokenizer has no "
                "eos token: a reply would never stop"
            )
        return self.hf.eos_token_id

    def _render_plain(
        self, messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> Rendered:
        ids: list[int] = []
        mask: list[int] = []
        for message in messages:
            role = message["role"]
            if role not in ("system", "user", "assistant"):
                raise KefuError(
                    f"unknown role {role!r} in a message; roles are system, user, assistant"
                )
            head, content = self.encode(f"{role}:"), self.encode(" " + message["content"])
            learn = int(role == "assistant")
            ids += [*head, *content, self.end_of_turn_id]
            mask += [0] * len(head) + [learn] * (len(content) + 1)
        if add_generation_prompt:
            head = self.encode("assistant:")
            ids += head
            mask += [0] * len(head)
        return Rendered(ids, mask)


# -- loading and saving ------------------------------------------------------------------


def _resolve_base(base: str | Path) -> tuple[str, str, str]:
    """(what to record as the base, the model folder or hub id, the tokenizer folder or id)."""
    path = Path(base)
    if (path / "config.yaml").is_file():
        config = read_hf_run_config(path)
        if config.lora is not None:
            raise KefuError(
                f"{path} is a LoRA run; merge it into a full model first "
                f"(`kefu models merge {path} --out DIR`) and use that as the base"
            )
        return str(path.resolve()), str(path / MODEL), str(path / TOKENIZER)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise KefuError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path.resolve()), str(path), str(path)
    if path.exists() or str(base).startswith((".", "/", "~")) or str(base).count("/") > 1:
        raise KefuError(f"{base}: no such model folder (nor a hub id like org/name)")
    return str(base), str(base), str(base)  # a hub id


def load_base(
    base: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[HFCausalLM, HFChatTokenizer]:
    """A Hugging Face causal LM (folder, full hf run, or hub id) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    recorded, model_source, tokenizer_source = _resolve_base(base)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(model_source, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise KefuError(f"cannot load {base} as a Hugging Face causal LM: {err}") from None
    tokenizer = HFChatTokenizer.load(tokenizer_source)
    if tokenizer.vocab_size > model.get_input_embeddings().num_embeddings:
        raise KefuError(
            f"{base}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding "
            f"only {model.get_input_embeddings().num_embeddings}"
        )
    return HFCausalLM(model, recorded).to(device).eval(), tokenizer


def is_hf_folder(path: str | Path) -> bool:
    """Whether `path` is a plain Hugging Face model folder (config.json with a model_type)."""
    try:
        described = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(described, dict) and "model_type" in described


def read_hf_run_config(run_dir: str | Path) -> HFConfig:
    """The `model:` section of an hf run's config.yaml, checked."""
    path = Path(run_dir) / "config.yaml"
    try:
        described = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KefuError(f"{run_dir} is not a kefu run folder (no config.yaml)") from None
    if not isinstance(described, dict) or described.get("arch") != ARCH:
        raise KefuError(f"{path}: not a Hugging Face (arch: {ARCH}) run")
    try:
        return HFConfig.model_validate(described.get("model"))
    except ValueError as err:
        raise KefuError(f"{path}: the `model:` section is damaged: {err}") from None


def save_hf_run(
    run_dir: str | Path,
    model: HFCausalLM,
    tokenizer: HFChatTokenizer,
    recipe: dict[str, Any],
    merged_from: str | None = None,
) -> None:
    """Write an hf run: only the adapter for a LoRA model, else the whole model; tokenizer and
    config.yaml beside it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lora = model.config.lora is not None and model.has_adapters
    with quiet_transformers(), replaced_folder(run_dir / (ADAPTER if lora else MODEL)) as staging:
        if lora:
            model.model.save_pretrained(
                str(staging), selected_adapters=[model.active_adapter], save_embedding_layers=False
            )
        else:
            model.base_model.save_pretrained(str(staging))
    with replaced_folder(run_dir / TOKENIZER) as staging:
        tokenizer.save(staging)
    config = model.config if lora else model.config.model_copy(update={"lora": None})
    if merged_from is not None:
        config = config.model_copy(update={"merged_from": merged_from})
    described = {
        "kefu_version": __version__,
        "arch": ARCH,
        "parameters": model.num_parameters(),
        "trainable_parameters": model.trainable_parameters() if lora else model.num_parameters(),
        "model": config.model_dump(),
        "recipe": recipe,
    }
    write_text_atomically(
        run_dir / "config.yaml", yaml.safe_dump(described, sort_keys=False, allow_unicode=True)
    )


def load_hf_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Any:
    """A `LoadedRun` of an hf run folder, or of a plain Hugging Face model folder.

    A LoRA run loads its base (as recorded) and its adapter, named after the run folder and in use.
    """
    from kefu.models.checkpoint import LoadedRun

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        model, tokenizer = load_base(run_dir, device)
        return LoadedRun(
            run_dir, ARCH, model, tokenizer, {"arch": ARCH, "model": model.config.model_dump()}
        )
    described = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    config = read_hf_run_config(run_dir)
    if config.lora is None:
        if not (run_dir / MODEL / "config.json").is_file():
            raise KefuError(f"{run_dir / MODEL} is missing; the run did not finish saving")
        model, tokenizer = load_base(run_dir, device)
    else:
        if not (run_dir / ADAPTER).is_dir():
            raise KefuError(f"{run_dir / ADAPTER} is missing; the run did not finish saving")
        model, _ = load_base(config.base, device)
        tokenizer = HFChatTokenizer.load(run_dir / TOKENIZER)
        model.load_adapter(run_dir, run_dir.name)
        model.use_adapter(run_dir.name)
        model.default_adapter = run_dir.name
        model.config = config
    return LoadedRun(run_dir, ARCH, model.eval(), tokenizer, described)


def merge_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA run's adapter into its base: a full-model hf run in `out_dir`."""
    from kefu.models.checkpoint import load_run

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if (out_dir / "config.yaml").exists():
        raise KefuError(f"{out_dir} already holds a run; choose a new --out")
    run = load_run(run_dir, arch=ARCH)
    model: HFCausalLM = run.model
    if model.config.lora is None:
        raise KefuError(f"{run_dir} is a full-model run; only a LoRA run can be merged")
    merged = HFCausalLM(model.merged(), model.config.base)
    merged.config = model.config  # what it was trained from; saving drops the LoRA settings
    save_hf_run(
        out_dir, merged, run.tokenizer, run.config.get("recipe", {}), str(run_dir.resolve())
    )
    return out_dir
