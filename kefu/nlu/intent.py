"""Intent classification with out-of-scope detection: the `embed` model and what every model shares.

    text ─ MiniLM (frozen) ─► 384-d unit vector ─ head (linear or MLP) ─► softmax over intents
                                                        └─ max probability < threshold → out_of_scope

The threshold is calibrated on validation data: the lowest confidence at which the answers the
model keeps reach a target precision (default 90%), out-of-scope questions counting as mistakes
when they are kept. Below it the assistant says it did not understand, or hands off.

Training uses kefu's one loop (kefu.train.loop) over precomputed embeddings, so a head trains in
seconds; metrics follow the CLINC150 convention (in-scope accuracy, out-of-scope recall). A recipe
may name more models (`ensemble:`): each trains on its own, and their probabilities are averaged
before the threshold applies.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from kefu.config import StrictModel, resolve_path
from kefu.data.folder import load_stats, read_split
from kefu.errors import KefuError
from kefu.eval.calibration import calibrate_threshold
from kefu.models.encoder import DEFAULT_ENCODER, mean_pool
from kefu.models.lora import LoRAConfig
from kefu.train.loop import TrainConfig

OUT_OF_SCOPE = "out_of_scope"


@dataclass
class Prediction:
    """The chosen intent (or out_of_scope), its confidence, and the top-k alternatives."""

    label: str
    confidence: float
    top: list[tuple[str, float]]


def load_examples(data_dir: str | Path, split: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of one split of an `intents` data folder."""
    stats = load_stats(data_dir)
    if stats["kind"] != "intents":
        raise KefuError(
            f"{data_dir} holds {stats['kind']}, not intents; ingest it with --format intents"
        )
    records = list(read_split(data_dir, split))
    return [r["text"] for r in records], [r["label"] for r in records]


def check_labels(train_labels: list[str], other: list[str], split: str) -> list[str]:
    """The label set, with clear errors for data no classifier can learn from, and warnings."""
    counts = Counter(train_labels)
    if len(counts) < 2:
        raise KefuError(
            f"the training split has {len(counts)} label(s) {sorted(counts)}; a classifier needs at least two"
        )
    unknown = sorted(set(other) - set(counts))
    if unknown:
        raise KefuError(
            f"the {split} split has labels never seen in training: {', '.join(unknown[:5])}"
            f"{' …' if len(unknown) > 5 else ''}; add training examples for them or fix the labels"
        )
    return sorted(counts)


class IntentHead(nn.Module):
    """A linear (hidden=0) or one-hidden-layer MLP classifier over sentence embeddings."""

    def __init__(self, dim: int, labels: int, hidden: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, labels))
            if not hidden
            else nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, labels),
            )
        )

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.net(embeddings)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class FeatureBatches:
    """`Batches` of (features, label ids) for the training loop; shuffled per epoch by seed.

    Features are whatever the model reads, computed once: sentence embeddings for `embed`,
    padded token ids for `textcnn`, ids and masks for `finetune`. Given each text's length in
    tokens, batches hold texts of similar length (see `Order`).
    """

    def __init__(
        self, features: Tensor, labels: Tensor, seed: int, lengths: Tensor | None = None
    ) -> None:
        from kefu.train.data import Order

        self.features = features
        self.labels = labels
        self.order = Order(len(labels), seed, lengths)

    def batch(self, index: int, size: int) -> tuple[Tensor, Tensor]:
        rows = self.order.rows(index, size)
        return self.features[rows], self.labels[rows]


def intent_metrics(gold: list[str], predicted: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-intent precision/recall/F1, and CLINC150's out-of-scope figures."""
    labels = sorted(set(gold) | set(predicted))
    per_label = {}
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, predicted, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    scored = [label for label in labels if per_label[label]["support"]]
    in_scope = [(g, p) for g, p in zip(gold, predicted, strict=True) if g != OUT_OF_SCOPE]
    oos = [p for g, p in zip(gold, predicted, strict=True) if g == OUT_OF_SCOPE]
    return {
        "examples": len(gold),
        "accuracy": sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold),
        "macro_f1": sum(per_label[label]["f1"] for label in scored) / len(scored),
        "in_scope_accuracy": sum(g == p for g, p in in_scope) / len(in_scope) if in_scope else None,
        "out_of_scope_recall": sum(p == OUT_OF_SCOPE for p in oos) / len(oos) if oos else None,
        "per_label": per_label,
    }


class IntentClassifier:
    """A trained intent model: how texts become features, the network, labels and threshold.

    Args:
        featurize: texts → the network's input (embeddings or padded token ids; for an
            ensemble, a list with one per member).
        description: what `load_classifier` needs to rebuild it (written to config.json).
    """

    def __init__(
        self,
        featurize: Callable[[list[str]], Any],
        network: nn.Module,
        labels: list[str],
        threshold: float,
        description: dict[str, Any],
    ) -> None:
        self.featurize = featurize
        self.network = network.eval()
        self.labels = labels
        self.threshold = threshold
        self.description = description

    @torch.inference_mode()
    def predict(self, texts: list[str], top_k: int = 3) -> list[Prediction]:
        return self.predict_features(self.featurize(texts), top_k)

    @torch.inference_mode()
    def predict_features(self, features: Tensor | list[Tensor], top_k: int = 3) -> list[Prediction]:
        probabilities = self.network(features).softmax(-1)
        values, indices = probabilities.topk(min(top_k, len(self.labels)), dim=-1)
        predictions = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True):
            top = [(self.labels[i], v) for i, v in zip(row_indices, row_values, strict=True)]
            label = top[0][0] if top[0][1] >= self.threshold else OUT_OF_SCOPE
            predictions.append(Prediction(label, top[0][1], top))
        return predictions

    def calibrate(self, features: Tensor | list[Tensor], gold: list[str], precision: float) -> None:
        """Set the out-of-scope threshold: the lowest confidence at which the kept answers on
        these (validation) features reach `precision`."""
        predictions = self.predict_features(features, top_k=1)
        confidence = torch.tensor([p.confidence for p in predictions])
        correct = torch.tensor([p.top[0][0] == g for p, g in zip(predictions, gold, strict=True)])
        self.threshold = calibrate_threshold(confidence, correct, precision)

    def save(self, run_dir: Path) -> None:
        from kefu.models.checkpoint import save_described

        described = {"kind": "intent", **self.description, "labels": self.labels}
        save_described(run_dir, self.network, {**described, "threshold": self.threshold})


class IntentModelRecipe(StrictModel):
    """One intent model: which, its settings, and how to train it.

    `train` starts from the model's own defaults (DEFAULT_TRAINING), so a recipe names only what
    it changes.
    """

    model: Literal["embed", "textcnn", "finetune"] = Field(
        "embed",
        description="embed: frozen MiniLM + trained head; textcnn: from scratch; "
        "finetune: MiniLM trained end to end.",
    )
    encoder: str = Field(
        DEFAULT_ENCODER, description="embed/finetune: the packaged MiniLM, or a model folder."
    )
    hidden: int = Field(512, ge=0, description="embed: width of the MLP head; 0: linear head.")
    vocab_size: int | None = Field(
        None, ge=300, description="textcnn: tokenizer size; none: about one per 4 texts."
    )
    max_length: int = Field(64, ge=8, description="finetune: tokens kept per text.")
    head: Literal["linear", "cosine"] = Field(
        "linear",
        description="finetune: a linear layer, or scaled cosines to vectors that start at "
        "each intent's mean embedding.",
    )
    lora: LoRAConfig | None = Field(
        None, description="finetune: train LoRA adapters instead of every weight."
    )
    train_word_embeddings: bool = Field(
        False,
        description="finetune: also train the 30k-word embedding table (slower; the words of "
        "a few thousand queries barely move it).",
    )
    train: TrainConfig = Field(description="Optimizer, schedule, evaluation.")

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, fields: Any) -> Any:
        if isinstance(fields, dict):
            model = fields.get("model", "embed")
            given = fields.get("train") or {}
            if isinstance(given, TrainConfig):
                given = given.model_dump(exclude_unset=True)
            if isinstance(given, dict):
                fields = {**fields, "train": {**DEFAULT_TRAINING.get(model, {}), **given}}
        return fields


class IntentRecipe(IntentModelRecipe):
    """A recipe for `kefu train intent`: a model (see IntentModelRecipe), the data, the
    out-of-scope precision target, and optionally more models to average with it."""

    kind: Literal["intent"]
    data: str | None = Field(None, description="An `intents` data folder (or --data).")
    precision: float = Field(
        0.9, gt=0, le=1, description="In-scope precision the out-of-scope threshold aims for."
    )
    ensemble: list[IntentModelRecipe] = Field(
        [],
        description="More models trained on the same data; the probabilities of all are "
        "averaged (more accurate where they err differently; latency is the sum of theirs).",
    )

    @field_validator("data")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_path(value, info)


_HEAD_TRAINING = {
    "max_steps": 2000,
    "batch_size": 64,
    "lr": 3e-3,
    "warmup_steps": 50,
    "eval_every": 250,
    "eval_batches": 16,
    "weight_decay": 0.01,
}
# A head learns fast from fixed features; a pretrained encoder needs small steps.
DEFAULT_TRAINING: dict[str, dict[str, Any]] = {
    "embed": _HEAD_TRAINING,
    "textcnn": _HEAD_TRAINING,
    # Chosen on BANKING77's validation split (lr 5e-5…2e-4, smoothing, 10 or 15 epochs, LoRA):
    # about ten epochs of it; see recipes/intent/.
    "finetune": {
        "max_steps": 2800,
        "batch_size": 32,
        "lr": 1e-4,
        "warmup_steps": 200,
        "label_smoothing": 0.1,
        "eval_every": 280,
        "eval_batches": 16,
        "weight_decay": 0.01,
        # fp32: bf16 autocast is slower on CPUs without AMX (0.29 against 0.19 s a step on one
        # with AVX-512 bf16 only, bench/finetune_step.py); on AMX CPUs and GPUs, set bf16.
    },
}


@dataclass
class Examples:
    """Training and validation texts with their label ids, and how many labels there are."""

    texts: list[str]
    targets: list[int]
    valid_texts: list[str]
    valid_targets: list[int]
    labels: int


def _embed_model(
    examples: Examples, run_dir: Path, recipe: IntentModelRecipe, encoder: Any
) -> tuple[Callable, nn.Module, dict]:
    """MiniLM sentence embeddings (frozen) under a linear or MLP head."""
    from kefu.models.encoder import SentenceEncoder

    encoder = encoder or SentenceEncoder(recipe.encoder)
    network = IntentHead(encoder.dim, examples.labels, recipe.hidden)
    return (
        encoder.encode,
        network,
        {"model": "embed", "encoder": encoder.name, "hidden": recipe.hidden},
    )


def _textcnn_model(
    examples: Examples, run_dir: Path, recipe: IntentModelRecipe, encoder: Any
) -> tuple[Callable, nn.Module, dict]:
    """A TextCNN over a byte-level BPE tokenizer learnt from the training texts (saved with it)."""
    from kefu.models.textcnn import TextCNN, TextCNNConfig
    from kefu.text.tokenizer import train_tokenizer

    # Few merges: with a large vocabulary, BPE learns whole short utterances (a Chinese
    # sentence has no spaces to stop it) and nothing generalises. About one token per 4 texts.
    vocab_size = recipe.vocab_size or min(8000, max(300, len(examples.texts) // 4))
    tokenizer = train_tokenizer(examples.texts, vocab_size, min_frequency=1)
    tokenizer.save(run_dir / "tokenizer.json")
    config = TextCNNConfig(
        vocab_size=tokenizer.vocab_size, labels=examples.labels, pad_id=tokenizer.pad_id
    )
    return (
        _token_features(tokenizer, config.max_length),
        TextCNN(config),
        {"model": "textcnn", "textcnn": config.model_dump()},
    )


def _token_features(tokenizer: Any, max_length: int) -> Callable[[list[str]], Tensor]:
    def featurize(texts: list[str]) -> Tensor:
        encoded = [ids[:max_length] for ids in tokenizer.encode_batch(texts)]
        ids = torch.full((len(texts), max(1, max(map(len, encoded), default=1))), tokenizer.pad_id)
        for row, piece in enumerate(encoded):
            ids[row, : len(piece)] = torch.tensor(piece, dtype=torch.long)
        return ids

    return featurize


class FineTunedEncoder(nn.Module):
    """A pretrained sentence encoder trained end to end with a classifier on its mean pooling.

    head "linear": a plain linear layer. head "cosine": logits are `scale` times the cosine
    between the text's embedding and one learnt vector per intent, which starts at the mean
    embedding of that intent's training texts, so training begins from a nearest-centroid
    classifier, as the sentence encoder was trained to compare by cosine.
    """

    def __init__(
        self,
        name_or_path: str,
        labels: int,
        head: str = "linear",
        dropout: float = 0.1,
        train_word_embeddings: bool = True,
    ) -> None:
        super().__init__()
        from kefu.models.encoder import pretrained_encoder

        self.encoder = pretrained_encoder(name_or_path)
        self.encoder.get_input_embeddings().weight.requires_grad_(train_word_embeddings)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(self.encoder.config.hidden_size, labels, bias=head == "linear")
        self.head = head

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def pooled(self, features: Tensor) -> Tensor:
        """Mean of the token states (B, hidden) for features (B, 2, T): ids and mask, right-padded."""
        width = int(features[:, 1].sum(1).max())  # this batch's longest text, not the data's
        ids, mask = features[:, 0, :width], features[:, 1, :width]
        return mean_pool(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    def forward(self, features: Tensor) -> Tensor:
        """Logits (B, labels)."""
        pooled = self.drop(self.pooled(features))
        if self.head == "linear":
            return self.out(pooled)
        cosine = nn.functional.normalize(pooled, dim=-1) @ nn.functional.normalize(
            self.out.weight, dim=-1
        ).T.to(pooled.dtype)
        return COSINE_SCALE * cosine

    @torch.no_grad()
    def start_at_centroids(self, features: Tensor, targets: list[int]) -> None:
        """Set each intent's vector to the mean unit embedding of its training texts."""
        was_training = self.training
        self.eval()
        sums = torch.zeros_like(self.out.weight)
        for first in range(0, len(features), 256):
            embedded = nn.functional.normalize(self.pooled(features[first : first + 256]), dim=-1)
            sums.index_add_(0, torch.tensor(targets[first : first + 256]), embedded)
        self.out.weight.copy_(nn.functional.normalize(sums, dim=-1))
        self.train(was_training)


# Cosines lie in [-1, 1]; scaled by 20 the softmax can still be confident over 150 intents.
COSINE_SCALE = 20.0


def encoder_features(name_or_path: str, max_length: int) -> Callable[[list[str]], Tensor]:
    """texts → (N, 2, T) token ids and attention masks of a pretrained encoder's tokenizer."""
    from kefu.models.encoder import pretrained_tokenizer

    tokenizer = pretrained_tokenizer(name_or_path)

    def featurize(texts: list[str]) -> Tensor:
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return torch.stack([batch["input_ids"], batch["attention_mask"]], dim=1)

    return featurize


def _finetune_model(
    examples: Examples, run_dir: Path, recipe: IntentModelRecipe, encoder: Any
) -> tuple[Callable, nn.Module, dict]:
    """MiniLM (or another sentence encoder) fine-tuned end to end, or through LoRA adapters."""
    network = FineTunedEncoder(
        recipe.encoder,
        examples.labels,
        recipe.head,
        train_word_embeddings=recipe.train_word_embeddings,
    )
    featurize = encoder_features(recipe.encoder, recipe.max_length)
    if recipe.head == "cosine":
        network.start_at_centroids(featurize(examples.texts), examples.targets)
    if recipe.lora:
        from kefu.models.lora import add_lora

        add_lora(network.encoder, recipe.lora)  # the output layer stays fully trainable
    description = {
        "model": "finetune",
        "encoder": recipe.encoder,
        "max_length": recipe.max_length,
        "head": recipe.head,
    }
    return featurize, network, description


class Ensemble(nn.Module):
    """Models trained apart that vote, each on its own features (a list, one per member): the
    log of their mean probabilities, so that a softmax over the output gives the average."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, features: list[Tensor]) -> Tensor:
        probabilities = [m(f).softmax(-1) for m, f in zip(self.members, features, strict=True)]
        return torch.stack(probabilities).mean(0).log()


def ensemble_features(
    featurizers: list[Callable[[list[str]], Tensor]],
) -> Callable[[list[str]], list[Tensor]]:
    """texts → one feature tensor per member of an Ensemble."""

    def featurize(texts: list[str]) -> list[Tensor]:
        return [member(texts) for member in featurizers]

    return featurize


INTENT_MODELS: dict[str, Callable[..., tuple[Callable, nn.Module, dict]]] = {
    "embed": _embed_model,
    "textcnn": _textcnn_model,
    "finetune": _finetune_model,
}


def train_intent(
    data_dir: str | Path, run_dir: str | Path, recipe: IntentRecipe, encoder: Any = None
) -> tuple[IntentClassifier, dict[str, Any]]:
    """Train an intent model (or each model of an ensemble) on an `intents` data folder,
    calibrate the threshold, save it.

    Args:
        encoder: embed only: an already loaded SentenceEncoder to reuse.
    """
    texts, gold = load_examples(data_dir, "train")
    valid_texts, valid_gold = load_examples(data_dir, "valid")
    labels = check_labels(gold, valid_gold, "valid")
    index = {label: i for i, label in enumerate(labels)}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    examples = Examples(
        texts, [index[g] for g in gold], valid_texts, [index[g] for g in valid_gold], len(labels)
    )
    models = [recipe, *recipe.ensemble]
    trained = [
        train_model(
            examples, run_dir / f"member{n}" if len(models) > 1 else run_dir, model, encoder
        )
        for n, model in enumerate(models)
    ]
    valid_features: Tensor | list[Tensor] | None
    if len(trained) == 1:
        featurize, network = trained[0].featurize, trained[0].network
        description, valid_features = trained[0].description, trained[0].valid_features
    else:
        featurize = ensemble_features([t.featurize for t in trained])
        network = Ensemble([t.network for t in trained])
        description = {"model": "ensemble", "members": [t.description for t in trained]}
        valid_features = None if not valid_texts else [t.valid_features for t in trained]
    classifier = IntentClassifier(featurize, network, labels, 0.0, description)
    if valid_features is not None:
        classifier.calibrate(valid_features, valid_gold, recipe.precision)
    classifier.save(run_dir)
    return classifier, {
        "labels": len(labels),
        "train_examples": len(texts),
        "threshold": classifier.threshold,
    }


@dataclass
class TrainedModel:
    """One trained model: how texts become its features, its network with the best validation
    weights, its description for config.json, and the validation features (for calibration)."""

    featurize: Callable[[list[str]], Tensor]
    network: nn.Module
    description: dict
    valid_features: Tensor | None  # None: the data has no validation split


def train_model(
    examples: Examples,
    run_dir: Path,
    recipe: IntentModelRecipe,
    encoder: Any,
    objective: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> TrainedModel:
    """One model trained by the loop, its best validation checkpoint kept.

    Args:
        objective: the training loss instead of cross-entropy (kefu.train.loop). Its targets
            are then each batch's row numbers in `examples.texts`, to look up what it needs
            (distillation: the teacher's soft labels).
    """
    from kefu.train.loop import BestWeights, train

    config = recipe.train
    torch.manual_seed(config.seed)
    featurize, network, description = INTENT_MODELS[recipe.model](
        examples, run_dir, recipe, encoder
    )
    features = featurize(examples.texts)
    # A fine-tuned encoder reads ids and masks: batching texts of similar length saves padding.
    lengths = features[:, 1].sum(1) if recipe.model == "finetune" else None
    targets = torch.arange(len(features)) if objective else torch.tensor(examples.targets)
    train_data = FeatureBatches(features, targets, config.seed, lengths)
    valid_features = featurize(examples.valid_texts) if examples.valid_texts else None
    valid_data = None
    if valid_features is not None:
        valid_data = FeatureBatches(
            valid_features, torch.tensor(examples.valid_targets), config.seed
        )
    best = BestWeights()
    train(network, train_data, valid_data, config, run_dir, best, objective=objective)
    best.restore(network)
    if recipe.lora:
        from kefu.models.lora import merge_lora

        merge_lora(network)
    return TrainedModel(featurize, network.cpu(), description, valid_features)


def load_classifier(run_dir: str | Path) -> IntentClassifier:
    """An intent model saved by `train_intent`, ready to predict."""
    from safetensors.torch import load_model

    from kefu.models.checkpoint import read_described

    run_dir = Path(run_dir)
    config = read_described(run_dir, "intent", "kefu train intent")
    ensemble = config.get("model") == "ensemble"
    for member in config["members"] if ensemble else [config]:
        if member.get("model") not in INTENT_MODELS:
            raise KefuError(
                f"{run_dir / 'config.json'}: model {member.get('model')!r} is none of {', '.join(INTENT_MODELS)} or ensemble"
            )
    labels = config["labels"]
    featurize: Callable[[list[str]], Any]
    network: nn.Module
    if ensemble:
        built = [
            _build_model(member, len(labels), run_dir / f"member{n}")
            for n, member in enumerate(config["members"])
        ]
        featurize = ensemble_features([f for f, _ in built])
        network = Ensemble([n for _, n in built])
    else:
        featurize, network = _build_model(config, len(labels), run_dir)
    load_model(network, str(run_dir / "model.safetensors"))
    described = {k: v for k, v in config.items() if k not in ("kind", "labels", "threshold")}
    return IntentClassifier(featurize, network, labels, config["threshold"], described)


def _build_model(
    description: dict, labels: int, files: Path
) -> tuple[Callable[[list[str]], Tensor], nn.Module]:
    """The featurizer and an untrained network of one saved model, from its description;
    `files` holds what it saved beside its weights (the TextCNN's tokenizer)."""
    model = description["model"]
    if model == "finetune":
        network: nn.Module = FineTunedEncoder(
            description["encoder"], labels, description.get("head", "linear")
        )
        return encoder_features(description["encoder"], description["max_length"]), network
    if model == "embed":
        from kefu.models.encoder import SentenceEncoder

        encoder = SentenceEncoder(description["encoder"])
        return encoder.encode, IntentHead(encoder.dim, labels, description["hidden"])
    from kefu.models.textcnn import TextCNN, TextCNNConfig
    from kefu.text.tokenizer import ChatTokenizer

    cnn = TextCNNConfig.model_validate(description["textcnn"])
    tokenizer = ChatTokenizer.load(files / "tokenizer.json")
    return _token_features(tokenizer, cnn.max_length), TextCNN(cnn)


def evaluate_intent(
    classifier: IntentClassifier, data_dir: str | Path, split: str, out_dir: str | Path
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-intent table, out-of-scope figures, confusions and CPU latency;
    writes report.md, confusion.png and eval.json into `out_dir`."""
    import time

    from kefu.files import write_text_atomically

    texts, gold = load_examples(data_dir, split)
    known = set(classifier.labels) | {OUT_OF_SCOPE}
    unknown = sorted(set(gold) - known)
    if unknown:
        raise KefuError(
            f"the {split} split has labels the model never learnt: {', '.join(unknown[:5])}; evaluate on data with the same intents"
        )
    predictions = classifier.predict_features(classifier.featurize(texts))
    predicted = [p.label for p in predictions]
    results = intent_metrics(gold, predicted)
    results["accuracy_without_threshold"] = intent_metrics(
        gold, [p.top[0][0] for p in predictions]
    )["accuracy"]
    results["threshold"] = classifier.threshold
    pairs = Counter((g, p) for g, p in zip(gold, predicted, strict=True) if g != p)
    results["most_confused"] = [
        {"gold": g, "predicted": p, "count": n} for (g, p), n in pairs.most_common(10)
    ]
    latencies = []
    for text in texts[:200]:  # one query at a time, as a chat turn arrives
        started = time.perf_counter()
        classifier.predict([text])
        latencies.append(1000 * (time.perf_counter() - started))
    latencies.sort()
    results["latency_ms"] = {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _confusion_png(gold, predicted, out / "confusion.png")
    write_text_atomically(
        out / "eval.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    )
    write_text_atomically(out / "report.md", _intent_report(results, split))
    return results


def _confusion_png(gold: list[str], predicted: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(set(gold) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    matrix = torch.zeros(len(labels), len(labels))
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g], index[p]] += 1
    size = max(4, len(labels) / 5)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow((matrix / matrix.sum(1, keepdim=True).clamp(min=1)).numpy(), cmap="Blues")
    axes.set(xlabel="predicted", ylabel="gold", title="confusion (row-normalised)")
    if len(labels) <= 40:
        axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        axes.set_yticks(range(len(labels)), labels, fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _intent_report(results: dict[str, Any], split: str) -> str:
    def percent(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.2f}"

    lines = [
        f"# Intent model on the {split} split ({results['examples']:,} examples)",
        "",
        "| accuracy | macro-F1 | in-scope accuracy | out-of-scope recall | threshold | latency p50 / p99 (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {percent(results['accuracy'])} | {percent(results['macro_f1'])} | {percent(results['in_scope_accuracy'])} | "
        f"{percent(results['out_of_scope_recall'])} | {results['threshold']:.3f} | "
        f"{results['latency_ms']['p50']:.1f} / {results['latency_ms']['p99']:.1f} |",
        "",
        "Most confused (gold → predicted): "
        + (
            ", ".join(
                f"{c['gold']} → {c['predicted']} ({c['count']})" for c in results["most_confused"]
            )
            or "none"
        ),
        "",
        "| intent | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, m in sorted(results["per_label"].items()):
        lines.append(
            f"| {label} | {percent(m['precision'])} | {percent(m['recall'])} | {percent(m['f1'])} | {m['support']} |"
        )
    return "\n".join(lines) + "\n\n![confusion](confusion.png)\n"
