"""kefu's tokenizer: byte-level BPE (any text round-trips exactly) with role tokens and a chat template.

Special tokens mark document ends, the three roles and the end of a turn; the PII placeholders
written by ingestion are whole tokens too, so `[PHONE]` costs one token and never splits. The
chat template renders a conversation as

    <|system|>…<|end|><|user|>…<|end|><|assistant|>…<|end|>

and returns, beside the ids, a mask that is 1 on the assistant's words and its closing `<|end|>`:
training on that mask teaches the model to answer and to stop, never to imitate customers.
Role tokens typed by a customer are encoded as plain text, so nobody can forge a turn.

The file is a plain `tokenizer.json` that `transformers.PreTrainedTokenizerFast` loads as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from kefu.data.pii import PLACEHOLDERS
from kefu.errors import KefuError
from kefu.files import replaced_atomically

PAD, END_OF_TEXT, END_OF_TURN = "<|pad|>", "<|endoftext|>", "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD, END_OF_TEXT, *ROLE_TOKENS.values(), END_OF_TURN]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> ChatTokenizer:
    """Learn byte-level BPE merges from `texts`; the vocabulary totals exactly `vocab_size`.

    Args:
        texts: training text (for a data folder: its train split, see `texts_of`).
        vocab_size: size of the final vocabulary, special tokens and placeholders included.
        min_frequency: a pair must occur at least this often to be merged.
    """
    placeholders = list(PLACEHOLDERS.values())
    base = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS) + len(placeholders)
    if vocab_size < base:
        raise KefuError(
            f"vocab size {vocab_size} is too small: byte-level BPE needs at least {base}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(placeholders),
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Not "special": they are words of the text and must come back on decode.
    tokenizer.add_tokens([AddedToken(p, single_word=False, normalized=False) for p in placeholders])
    return ChatTokenizer(tokenizer)


@dataclass(frozen=True)
class Rendered:
    """A conversation as token ids, with 1 in `assistant_mask` where the model should learn."""

    ids: list[int]
    assistant_mask: list[int]


class ChatTokenizer:
    """Encode, decode and render conversations with kefu's chat template."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise KefuError(
                f"tokenizer lacks kefu's special tokens {missing}; train one with `kefu tokenizer train`"
            )
        self.tokenizer = tokenizer
        # Special tokens typed inside a message are plain text, not control tokens.
        self.tokenizer.encode_special_tokens = True
        self.pad_id = tokenizer.token_to_id(PAD)
        self.end_of_text_id = tokenizer.token_to_id(END_OF_TEXT)
        self.end_of_turn_id = tokenizer.token_to_id(END_OF_TURN)
        self.role_ids = {role: tokenizer.token_to_id(token) for role, token in ROLE_TOKENS.items()}

    @classmethod
    def load(cls, path: str | Path) -> ChatTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # the tokenizers library raises plain Exceptions
            raise KefuError(f"{path}: cannot load the tokenizer ({err})") from None

    def save(self, path: str | Path) -> None:
        with replaced_atomically(path) as temporary:
            self.tokenizer.save(str(temporary))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def base_size(self) -> int:
        """Tokens learnt by BPE (ids below this); the PII placeholders come after them."""
        return self.tokenizer.get_vocab_size(with_added_tokens=False)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def tokens(self, text: str) -> list[str]:
        """The pieces `text` is cut into, readable (bytes shown as text), for inspection."""
        return [self.decode([i]) for i in self.encode(text)]

    def render(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
    ) -> Rendered:
        """Token ids and assistant mask for a conversation of {"role", "content"} messages.

        Args:
            messages: the conversation, roles system/user/assistant.
            add_generation_prompt: end with `<|assistant|>` so a model continues with the reply.
        """
        ids: list[int] = []
        mask: list[int] = []
        contents = self.encode_batch([m["content"] for m in messages])
        for message, content in zip(messages, contents, strict=True):
            role = message["role"]
            if role not in self.role_ids:
                raise KefuError(
                    f"unknown role {role!r} in a message; roles are {', '.join(self.role_ids)}"
                )
            learn = int(role == "assistant")
            ids += [self.role_ids[role], *content, self.end_of_turn_id]
            mask += [0, *[learn] * len(content), learn]
        if add_generation_prompt:
            ids.append(self.role_ids["assistant"])
            mask.append(0)
        return Rendered(ids, mask)
