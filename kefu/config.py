"""Typed configs: YAML in, pydantic models out, and errors that name the file, line and key.

Every YAML file kefu reads starts with `kind:`, which picks its model from `config_kinds()`.
Relative paths inside a file are resolved against the folder the file is in, so a project or a
recipe works from whatever directory the command is run.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kefu.data.pii import PII_TYPES
from kefu.data.readers import FORMATS
from kefu.errors import KefuError

Language = Literal["en", "zh"]
Model = TypeVar("Model", bound=BaseModel)
Role = Literal["system", "user", "assistant"]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def resolve_path(path: str, info: ValidationInfo) -> str:
    """Expand ~ and $VARS, and anchor a relative path at the config file's folder."""
    expanded = os.path.expandvars(os.path.expanduser(path))
    base = (info.context or {}).get("base_dir")
    if base is None or Path(expanded).is_absolute():
        return expanded
    return str(Path(base) / expanded)


class SplitConfig(StrictModel):
    """How records are divided into train/valid/test when the source does not say."""

    train: float = Field(0.8, ge=0, le=1, description="Share of conversations for training.")
    valid: float = Field(0.1, ge=0, le=1, description="Share for validation (model selection).")
    test: float = Field(0.1, ge=0, le=1, description="Share held out for the final evaluation.")
    seed: int = Field(0, description="Changes which records land in which split, reproducibly.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + valid + test must add up to 1, got {total:g}")
        return self


class RedactConfig(StrictModel):
    """Personal data replaced by typed placeholders before anything is written."""

    enabled: bool = Field(True, description="Redact personal data (on by default).")
    types: list[str] = Field(
        default_factory=lambda: list(PII_TYPES), description="Which kinds of personal data."
    )
    allow: list[str] = Field(
        default_factory=list,
        description="Strings never redacted, such as the company's own hotline and e-mail.",
    )

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in PII_TYPES]
        if unknown:
            raise ValueError(
                f"unknown PII type {unknown[0]!r}; valid types: {', '.join(PII_TYPES)}"
            )
        return value


class DataSource(StrictModel):
    """One body of input data: its format, files and how to clean and split it."""

    format: str = Field(description="Input format; one of kefu.data.readers.FORMATS.")
    inputs: list[str] = Field(min_length=1, description="Files or glob patterns to read.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field → column name in the source (csv, intents, faq formats).",
    )
    roles: dict[str, Role] = Field(
        default_factory=dict, description="Extra speaker names → role, e.g. {Alice: assistant}."
    )
    encoding: str = Field("utf-8", description="Text encoding of the input files (e.g. gb18030).")
    lowercase: bool = Field(False, description="Lower-case all text (off: case carries meaning).")
    dedupe: bool = Field(True, description="Drop exact duplicate records.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train/valid/test shares.")
    redact: RedactConfig = Field(default_factory=RedactConfig, description="PII redaction.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; valid formats: {', '.join(FORMATS)}")
        return value

    @field_validator("inputs")
    @classmethod
    def _resolve_inputs(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return [resolve_path(p, info) for p in value]

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        fmt = info.data.get("format")  # validated before, being declared first
        fields = FORMATS[fmt].fields if fmt else ()
        for name in value:
            if fmt and name not in fields:
                valid = ", ".join(fields) or "none (this format has fixed field names)"
                raise ValueError(
                    f"format {fmt!r} has no field {name!r} to map; valid fields: {valid}"
                )
        return value


class DataRecipe(DataSource):
    """A stand-alone data recipe (`kefu data ingest --recipe FILE`)."""

    kind: Literal["data"]


class TokenizerConfig(StrictModel):
    """The project's byte-level BPE tokenizer."""

    vocab_size: int = Field(8000, ge=300, le=262144, description="Tokens in the vocabulary.")
    min_frequency: int = Field(2, ge=1, description="A merge must occur this often to be learnt.")
    data: list[str] = Field(
        default_factory=list,
        description="Data sets (names under `data`) to learn from; all if empty.",
    )


class KnowledgeBaseConfig(StrictModel):
    """Where the assistant's grounded answers come from."""

    sources: list[str] = Field(
        default_factory=list, description="Data sets of format `faq` that form the knowledge base."
    )
    documents: list[str] = Field(
        default_factory=list,
        description="Markdown, HTML, text or JSON record files, or folders of them, to index too.",
    )
    queries: str | None = Field(
        None,
        description="Held-out questions (CSV/JSONL: query, ids) to calibrate the answer threshold "
        "on; default: the FAQ's paraphrases, each held out in turn.",
    )
    precision: float = Field(
        0.9, gt=0, le=1, description="Share of direct answers from the FAQ that must be right."
    )

    @field_validator("documents")
    @classmethod
    def _resolve_documents(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return [resolve_path(path, info) for path in value]

    @field_validator("queries")
    @classmethod
    def _resolve_queries(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value and resolve_path(value, info)


class EntitiesConfig(StrictModel):
    """Entities beyond the built-in ones (amounts, dates, times, card last four, phone, e-mail)."""

    patterns: dict[str, str] = Field(
        default_factory=dict,
        description="Entity type → regular expression for the company's own ids, e.g. order_id.",
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"pattern of {name!r} is not a valid regular expression: {err}"
                ) from None
        return value


class IntentsConfig(StrictModel):
    """The intent models `kefu build` trains: one per customer language (or one for all)."""

    data: str = Field(description="The data set (format `intents`) to train on.")
    recipes: dict[Language | Literal["all"], str] = Field(
        min_length=1,
        description="Language → intent recipe (`kind: intent`); `all`: one model for every "
        "language. A message goes to the model of its language.",
    )

    @field_validator("recipes")
    @classmethod
    def _resolve_recipes(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if "all" in value and len(value) > 1:
            raise ValueError("`all` is one model for every language; give it alone")
        return {language: resolve_path(path, info) for language, path in value.items()}


class GeneratorConfig(StrictModel):
    """The model that answers what the FAQ cannot: trained by `kefu build` from a recipe."""

    data: str = Field(description="The conversation data set (format with messages) to train on.")
    recipe: str = Field(description="A training recipe (`kind: train`, task chat).")
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapter runs (`kefu train chat --base … --lora …`) on the generator's "
        "Hugging Face base, by name: a request for model `<project>:<name>` is answered with "
        "that adapter, all on one loaded base.",
    )

    @field_validator("recipe")
    @classmethod
    def _resolve_recipe(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value, info)

    @field_validator("adapters")
    @classmethod
    def _resolve_adapters(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(
                    f"adapter name {name!r} may hold only letters, digits, '_', '.' and '-'"
                )
        return {name: resolve_path(path, info) for name, path in value.items()}


DEFAULT_HANDOFF_PHRASES: dict[str, list[str]] = {
    "en": [
        "agent",
        "human",
        "a person",
        "real person",
        "representative",
        "operator",
        "speak to someone",
        "talk to someone",
    ],
    "zh": ["转人工", "人工客服", "人工服务", "真人", "找人工", "客服人员"],
}
DEFAULT_HANDOFF_MESSAGE: dict[str, str] = {
    "en": "I'm passing you to a colleague, who will reply here shortly.",
    "zh": "正在为您转接人工客服，请稍候，同事会在这里回复您。",
}


class HandoffConfig(StrictModel):
    """When a conversation goes to a person instead of the machine."""

    phrases: dict[Language, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_HANDOFF_PHRASES.items()},
        description="Words or phrases that ask for a person (whole words in English).",
    )
    low_confidence_turns: int = Field(
        2, ge=1, description="Hand off after this many low-confidence answers in a row."
    )
    max_turns: int = Field(
        20, ge=1, description="Hand off when a conversation reaches this many customer messages."
    )
    anger: float = Field(
        2.0, gt=0, description="Hand off at this anger score (lexicon-based; see sentiment.py)."
    )
    message: dict[Language, str] = Field(
        default_factory=lambda: dict(DEFAULT_HANDOFF_MESSAGE),
        description="What the customer is told when handed off.",
    )


class AssistantConfig(StrictModel):
    """How the assistant presents itself to customers and decides who answers."""

    name: str = Field("Assistant", description="Name shown on the chat page.")
    greeting: dict[Language, str] = Field(
        default_factory=dict, description="First message per language."
    )
    system: str = Field(
        "You are a polite customer-service assistant. Answer from the passages when they help.",
        description="The generator's system message; the retrieved passages follow it.",
    )
    passages: int = Field(3, ge=0, description="Knowledge-base passages given to the generator.")
    max_new_tokens: int = Field(96, ge=1, description="Longest generated reply, in tokens.")
    temperature: float = Field(0.7, ge=0, description="Generator temperature (0: greedy).")
    top_p: float = Field(0.9, gt=0, le=1, description="Generator nucleus sampling.")
    repetition_penalty: float = Field(1.2, ge=1, description="Generator repetition penalty.")
    no_answer: dict[Language, str] = Field(
        default_factory=lambda: {
            "en": "Sorry, I don't know the answer to that. Could you put it another way, or "
            "ask for a colleague?",
            "zh": "抱歉，这个问题我暂时无法回答。您可以换个说法，或者输入“转人工”联系人工客服。",
        },
        description="Said when the generator produces nothing.",
    )
    max_batch: int = Field(
        16,
        ge=1,
        le=256,
        description="Most replies the generator writes at once (continuous batching); more "
        "wait for a free row.",
    )
    handoff: HandoffConfig = Field(default_factory=HandoffConfig, description="Hand-off rules.")


class ServeConfig(StrictModel):
    """How `kefu serve` exposes the assistant."""

    database: str | None = Field(
        None,
        description="SQLAlchemy URL of the conversation store (sqlite:///… or postgresql://…); "
        "none: SQLite at <build_dir>/kefu.db. `kefu serve --db` overrides it.",
    )
    anonymous_chat: bool = Field(
        True,
        description="Let the public web page chat without an API key (rate-limited per client "
        "address); false: every chat request needs a key with scope chat.",
    )
    rate_limit_per_minute: int = Field(
        60, ge=1, description="Requests a minute per API key (or per address without a key)."
    )
    max_body_bytes: int = Field(
        65536, ge=1024, description="Larger request bodies are refused with 413."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Other web origins allowed to call the API from a browser.",
    )


class RegistryConfig(StrictModel):
    """The model registry: pushed versions of each model, and how a new one goes live."""

    path: str | None = Field(
        None,
        description="Folder of pushed versions; none: <build_dir>/registry. Replicas on several "
        "machines need it on storage they all mount.",
    )
    promote_margin: float = Field(
        0.02,
        ge=0,
        description="`kefu models promote` refuses a version whose held-out score is worse than "
        "the live one's by more than this fraction of it (0.02: 2%), unless --force.",
    )
    poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often each server process checks for a change."
    )
    promote_build: bool = Field(
        True,
        description="`kefu serve` pushes the models `kefu build` made and promotes a changed one "
        "through the same evaluation gate; false: only `kefu models promote` changes what serves.",
    )

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_path(value, info)


class ProjectConfig(StrictModel):
    """A kefu project (`kefu.yaml`): its data, tokenizer, knowledge base and assistant."""

    kind: Literal["project"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Short name used in run names.")
    description: str = Field("", description="One line on what this assistant is for.")
    languages: list[Language] = Field(["en"], min_length=1, description="Customer languages.")
    build_dir: str = Field("build", description="Where `kefu build` writes its outputs.")
    data: dict[str, DataSource] = Field(description="Named data sets to ingest.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer.")
    knowledge_base: KnowledgeBaseConfig = Field(
        default_factory=KnowledgeBaseConfig, description="FAQ sources for grounded answers."
    )
    entities: EntitiesConfig = Field(
        default_factory=EntitiesConfig, description="Company-specific entities."
    )
    intents: IntentsConfig | None = Field(None, description="Intent models to train.")
    generator: GeneratorConfig | None = Field(None, description="The generator to train.")
    assistant: AssistantConfig = Field(
        default_factory=AssistantConfig, description="Persona and hand-off policy."
    )
    serve: ServeConfig = Field(default_factory=ServeConfig, description="The server.")
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig, description="Model versions, promotion and rollback."
    )

    @field_validator("build_dir")
    @classmethod
    def _resolve_build_dir(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _references_exist(self) -> ProjectConfig:
        for section, names in (
            ("tokenizer.data", self.tokenizer.data),
            ("knowledge_base.sources", self.knowledge_base.sources),
            ("intents.data", [self.intents.data] if self.intents else []),
            ("generator.data", [self.generator.data] if self.generator else []),
        ):
            for name in names:
                if name not in self.data:
                    raise ValueError(
                        f"{section} names data set {name!r}, which is not under `data`; "
                        f"defined data sets: {', '.join(self.data) or 'none'}"
                    )
        if self.intents and self.data[self.intents.data].format != "intents":
            raise ValueError(
                f"intents.data: data set {self.intents.data!r} has format "
                f"{self.data[self.intents.data].format!r}; intent models train on format 'intents'"
            )
        for name in self.knowledge_base.sources:
            if self.data[name].format != "faq":
                raise ValueError(
                    f"knowledge_base.sources: data set {name!r} has format "
                    f"{self.data[name].format!r}; a knowledge base is built from format 'faq'"
                )
            if self.data[name].columns:
                raise ValueError(
                    f"knowledge_base.sources: data set {name!r} renames columns; the knowledge "
                    "base reads FAQ files by their own column names (question, answer, id, "
                    "category, url, paraphrases), so rename them in the file"
                )
        return self


def config_kinds() -> dict[str, type[StrictModel]]:
    """Config models by the `kind:` a YAML file starts with."""
    from kefu.nlu.intent import IntentRecipe  # imported here: recipes build on this module
    from kefu.nlu.tagger import TaggerRecipe
    from kefu.train.recipe import TrainRecipe

    return {
        "project": ProjectConfig,
        "data": DataRecipe,
        "train": TrainRecipe,
        "intent": IntentRecipe,
        "entities": TaggerRecipe,
    }


class ConfigError(KefuError):
    """A config file that does not match its model; the message lists every problem."""


def load_config(path: str | Path, kind: str | None = None) -> Any:
    """Read a YAML config, pick its model by `kind`, validate, and return the model.

    Args:
        path: the YAML file.
        kind: the kind the caller needs; a file of another kind is an error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys starting with `kind:` "
            f"(one of {', '.join(config_kinds())}), got {type(data).__name__}"
        )
    found = data.get("kind")
    if found not in config_kinds():
        hint = f"; expected `kind: {kind}`" if kind else ""
        raise ConfigError(
            f"{path}:{lines.get(('kind',), 1)}: kind: {found!r} is not a config kind; "
            f"valid kinds: {', '.join(config_kinds())}{hint}"
        )
    if kind is not None and found != kind:
        raise ConfigError(f"{path}: this is a {found!r} config; this command needs `kind: {kind}`")
    model = config_kinds()[found]
    return validate(model, data, f"{path}", f"{found} config", lines, path.parent)


def validate(
    model: type[Model],
    data: dict[str, Any],
    source: str,
    what: str,
    lines: dict[tuple, int] | None = None,
    base_dir: Path | None = None,
) -> Model:
    """Validate `data` as `model`, or raise a ConfigError that lists every problem.

    Args:
        source: where the data came from, e.g. a file name or "the command-line options".
        what: what it should be, for the error's first line ("project config").
        lines: key path → line in `source`, when it is a file.
        base_dir: the folder relative paths in the data are relative to.
    """
    try:
        return model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        problems = [_describe(e, source, lines or {}, model) for e in err.errors()]
        raise ConfigError(f"{source}: not a valid {what}:\n" + "\n".join(problems)) from None


def _describe(error: Any, source: str, lines: dict[tuple, int], model: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc) or "(top level)"
    # The line of the deepest key that exists in the file (a missing key: its parent's line).
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), 1)
    where = f"{source}:{line}" if lines else source
    if error["type"] == "extra_forbidden":
        valid = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        return f"  {where}: {key}: unknown key{hint} Valid keys here: {', '.join(valid)}"
    message = error["msg"].removeprefix("Value error, ")
    shown = error["type"] != "missing" and not isinstance(error.get("input"), dict | list)
    got = f" (got {error['input']!r})" if shown else ""
    return f"  {where}: {key}: {message}{got}"


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys of the mapping at `loc` inside `model` (dict keys and list indexes skipped)."""
    node: Any = model
    parts = list(loc)
    while parts:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(parts.pop(0)))
            if field is None:
                return []
            node = field.annotation
            continue
        origin, args = typing.get_origin(node), typing.get_args(node)
        if origin in (typing.Union, types.UnionType):
            node = next((a for a in args if a is not type(None)), None)
        elif origin in (list, dict):
            parts.pop(0)
            node = args[-1]
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _key_lines(node: yaml.Node | None, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, index)
            lines[path] = item.start_mark.line + 1
            lines.update(_key_lines(item, path))
    return lines
