"""`kefu train distill`: a small student learns from a trained teacher's softened outputs.

    loss = alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T))
         + (1 − alpha) · cross-entropy(student, labels)

summed over the positions that carry a loss (Hinton et al. 2015). A temperature T > 1 shows the
student how the teacher ranks the wrong answers too; T² keeps the gradient of the soft term on
the scale of the hard one as T grows. Defaults: T = 2, alpha = 0.5.

Two kinds of teacher, told apart by their run folder:

- a generator (config.yaml; GPT or LSTM, anything `load_run` loads): the student is a
  `kind: train` recipe trained by the shared loop on the same data with the teacher's tokenizer,
  the teacher's logits computed on the fly for each batch (eval mode, no grad; storing them
  would take a vocabulary of floats per token);
- an intent classifier (config.json, kind intent): the student is a `kind: intent` recipe; the
  teacher's probabilities on the training texts are computed once.

Either way the output is an ordinary run folder that loads, evaluates and serves like any other,
with the teacher and the settings recorded (config.yaml's `distilled_from`, or config.json's),
plus distill.json and distill.md (not report.md, which `kefu eval` writes into the run): the
student against the teacher for quality (perplexity, or accuracy) and CPU latency at batch 1.
Validation during training is plain cross-entropy, so the best checkpoint is chosen as for any
run; the recipe's label_smoothing is not used.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from kefu.compress.quantize import parameter_count
from kefu.console import note
from kefu.errors import KefuError
from kefu.files import write_text_atomically
from kefu.text.tokenizer import ChatTokenizer
from kefu.train.loop import IGNORE, Distributed, resolve_device, train

DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5
REPORT, SUMMARY = "distill.md", "distill.json"


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
) -> Tensor:
    """alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · CE(student, targets), summed over
    the positions whose target is not IGNORE.

    Args:
        student_logits, teacher_logits: (..., V), e.g. (B, T, V) or (B, C); the teacher's may be
            log-probabilities (an ensemble's), since the softmax ignores a constant shift.
        targets: (...) label ids, IGNORE where there is no loss.
    """
    check_settings(temperature, alpha)
    keep = targets.flatten() != IGNORE
    student = student_logits.float().flatten(0, -2)[keep]  # (N, V)
    teacher = teacher_logits.float().flatten(0, -2)[keep].detach()
    targets = targets.flatten()[keep]
    log_student = F.log_softmax(student / temperature, dim=-1)
    teacher_p = F.softmax(teacher / temperature, dim=-1)
    # xlogy: 0 · log 0 = 0, for teachers sure enough that some probabilities underflow.
    kl = (torch.xlogy(teacher_p, teacher_p) - teacher_p * log_student).sum()
    hard = F.cross_entropy(student, targets, reduction="sum")
    return alpha * temperature**2 * kl + (1 - alpha) * hard


def check_settings(temperature: float, alpha: float) -> None:
    if not temperature > 0 or not 0 <= alpha <= 1:
        raise KefuError(
            f"distillation needs --temperature > 0 and 0 ≤ --alpha ≤ 1, not {temperature} and {alpha}"
        )


def teacher_kind(teacher_dir: str | Path) -> str:
    """ "generator" (a config.yaml run) or "intent" (config.json of kind intent), from the folder."""
    folder = Path(teacher_dir)
    if (folder / "config.yaml").is_file():
        return "generator"
    described = folder / "config.json"
    if described.is_file():
        fields = json.loads(described.read_text(encoding="utf-8"))
        if "model_type" in fields:  # a plain Hugging Face model folder, which `load_run` loads
            return "generator"
        kind = fields.get("kind")
        if kind == "intent":
            return "intent"
        raise KefuError(
            f"{described}: a {kind!r} model; a teacher is a generator run (`kefu train lm|chat`) "
            "or an intent run (`kefu train intent`)"
        )
    raise KefuError(
        f"{folder} is not a run folder (no config.yaml or config.json); give the teacher's run "
        "folder from `kefu train lm|chat|intent`"
    )


def _record(settings: dict[str, Any], temperature: float, alpha: float) -> dict[str, Any]:
    return {**settings, "temperature": temperature, "alpha": alpha}


def _write_report(out_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomically(
        out_dir / SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    )
    write_text_atomically(out_dir / REPORT, report_markdown(summary))


def report_markdown(summary: dict[str, Any]) -> str:
    """The student against the teacher as a Markdown table."""
    quality, speed = summary["quality"], summary["speed"]
    teacher, student = summary["teacher"], summary["student"]
    lines = [
        f"# Distilled from {summary['distilled_from']['teacher']}",
        "",
        f"T = {summary['distilled_from']['temperature']}, alpha = "
        f"{summary['distilled_from']['alpha']}; {quality} on the {summary['split']} split, "
        f"{speed} on the CPU at batch 1.",
        "",
        f"| model | parameters | {quality} | {speed} |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in (("teacher", teacher), ("student", student)):
        lines.append(
            f"| {name}: {row['model']} | {row['parameters']:,} | {row['quality']:.4g} | "
            f"{row['latency_ms']:.2f} |"
        )
    lines += [
        "",
        f"The student is {summary['speedup']:.1f}× as fast as the teacher; {kept_text(summary)}.",
    ]
    return "\n".join(lines) + "\n"


def _summary(
    kind: str,
    record: dict[str, Any],
    split: str,
    teacher: dict[str, Any],
    student: dict[str, Any],
    higher_is_better: bool,
) -> dict[str, Any]:
    kept = (
        student["quality"] / teacher["quality"]
        if higher_is_better
        else teacher["quality"] / student["quality"]
    )
    return {
        "kind": kind,
        "distilled_from": record,
        "split": split,
        "quality": "accuracy" if higher_is_better else "perplexity",
        "speed": "ms per query" if kind == "intent" else "ms per generated token",
        "teacher": teacher,
        "student": student,
        "speedup": teacher["latency_ms"] / max(student["latency_ms"], 1e-9),
        "quality_kept": kept,
    }


# -- generators ---------------------------------------------------------------------------------


def check_same_tokenizer(
    teacher: ChatTokenizer, student: ChatTokenizer, teacher_dir: Path, student_path: str
) -> None:
    """A clear error unless both tokenizers map the same tokens to the same ids."""
    if teacher.tokenizer.get_vocab(with_added_tokens=True) != student.tokenizer.get_vocab(
        with_added_tokens=True
    ):
        raise KefuError(
            f"the student's tokenizer {student_path} ({student.vocab_size:,} tokens) is not the "
            f"teacher's {teacher_dir / 'tokenizer.json'} ({teacher.vocab_size:,} tokens): "
            "distillation matches the two models' next-token distributions id by id, so both must "
            "use one tokenizer; drop `tokenizer:` from the student recipe (and --tokenizer) to "
            "train the student with the teacher's"
        )


def ms_per_token(model: nn.Module, prompt: list[int], steps: int = 32, repeats: int = 3) -> float:
    """Median milliseconds per greedily decoded token at batch 1 (prompt read first, not timed)."""
    from kefu.eval.compare import time_decoding

    model.eval()
    steps = min(steps, model.config.context_length - len(prompt))
    time_decoding(model, [prompt], steps)  # warms up the kernels
    rounds = [time_decoding(model, [prompt], steps).step_s for _ in range(repeats)]
    return 1000 * statistics.median(step for steps_s in rounds for step in steps_s)


def _generator_row(run: Any, data_dir: Path, split: str, task: str, limit: int) -> dict[str, Any]:
    from kefu.eval.lm import perplexity

    scored = perplexity(run, data_dir, split, task, limit)
    prompt = run.tokenizer.encode("Hello, I have a question about my card.")[:8]
    return {
        "run": str(run.path),
        "model": run.arch,
        "parameters": parameter_count(run.model),
        "quality": scored["perplexity"],
        "tokens": scored["tokens"],
        "latency_ms": ms_per_token(run.model, [run.tokenizer.end_of_text_id, *prompt]),
    }


def _split_for_quality(task: str, data_dir: Path, tokenizer: ChatTokenizer, block: int) -> str:
    from kefu.train.data import build_batches

    for split in ("test", "valid"):
        try:
            build_batches(task, data_dir, split, tokenizer, block, seed=0)
            return split
        except (KefuError, FileNotFoundError):
            continue
    return "train"


def distill_generator(
    teacher_dir: str | Path,
    recipe: Any,
    out_dir: str | Path,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    eval_limit: int = 200,
) -> dict[str, Any]:
    """Train the student of `recipe` (a TrainRecipe, task lm or chat) against a generator run.

    Args:
        teacher_dir: a run folder `load_run` loads.
        recipe: the student; its data (else the teacher's recorded data) and the teacher's
            tokenizer are used.
        eval_limit: windows or conversations scored for the perplexity comparison.
    Returns:
        The comparison written to distill.json.
    """
    from kefu.models import build_model
    from kefu.models.checkpoint import CONFIG, load_run, save_run
    from kefu.train.data import build_batches, check_data

    teacher_dir, out = Path(teacher_dir), Path(out_dir)
    check_settings(temperature, alpha)
    device = resolve_device(recipe.train.device)
    teacher = load_run(teacher_dir, device=device)
    if teacher.arch == "hf":
        raise KefuError(
            f"{teacher_dir} is a Hugging Face model; a kefu student (gpt or lstm) cannot use its "
            "tokenizer yet. Distil from a kefu run, or fine-tune a smaller Hugging Face model "
            "with `kefu train chat --base`"
        )
    tokenizer = teacher.tokenizer
    if recipe.tokenizer:
        check_same_tokenizer(
            tokenizer, ChatTokenizer.load(recipe.tokenizer), teacher_dir, recipe.tokenizer
        )
    data = recipe.data or teacher.config.get("recipe", {}).get("data")
    if data is None:
        raise KefuError("no training data: give --data DATA_FOLDER or set `data:` in the recipe")
    data_dir = Path(data)
    check_data(data_dir, recipe.task)
    if (out / CONFIG).exists() or (out / "checkpoint").exists():
        raise KefuError(f"{out} already holds a run; choose a new --out")
    model_config = getattr(recipe, recipe.arch).model_copy(
        update={"vocab_size": tokenizer.vocab_size}
    )
    block = model_config.context_length
    if teacher.model.config.vocab_size != tokenizer.vocab_size:
        raise KefuError(
            f"{teacher_dir}: the model has {teacher.model.config.vocab_size:,} outputs but its "
            f"tokenizer {tokenizer.vocab_size:,} tokens; the run folder is damaged"
        )
    if teacher.arch == "gpt" and teacher.model.config.context_length < block:
        raise KefuError(
            f"the student's context_length {block} exceeds the teacher's "
            f"{teacher.model.config.context_length} ({teacher_dir}); the teacher must see every "
            f"window the student learns from: set {recipe.arch}.context_length ≤ "
            f"{teacher.model.config.context_length} in the student recipe"
        )
    torch.manual_seed(recipe.train.seed)
    student = build_model(recipe.arch, model_config)
    seed = recipe.train.seed
    train_data = build_batches(recipe.task, data_dir, "train", tokenizer, block, seed)
    try:
        valid_data = build_batches(recipe.task, data_dir, "valid", tokenizer, block, seed)
    except KefuError:
        valid_data = None
        note(f"[yellow]{data_dir} has no usable valid split: no evaluation or early stopping[/]")
    record = _record({"teacher": str(teacher_dir), "kind": "generator"}, temperature, alpha)
    described = json.loads(recipe.model_copy(update={"data": str(data_dir)}).model_dump_json())

    def save(trained: nn.Module) -> None:
        save_run(out, recipe.arch, trained, tokenizer, described)
        path = out / CONFIG
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        text = yaml.safe_dump(
            {**config, "distilled_from": record}, sort_keys=False, allow_unicode=True
        )
        write_text_atomically(path, text)

    autocast = recipe.train.precision == "bf16"

    def objective(logits: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        # The teacher runs in the student's precision: in bf16 it is most of a step's work.
        with torch.no_grad(), torch.autocast(inputs.device.type, torch.bfloat16, autocast):
            guide = teacher.model(inputs)
        return distillation_loss(logits, guide.float(), targets, temperature, alpha)

    note(
        f"distilling {teacher.arch} {teacher_dir} ({parameter_count(teacher.model):,} parameters) "
        f"into a {student.num_parameters():,}-parameter {recipe.arch} on {train_data.tokens:,} "
        f"tokens of {data_dir}; T={temperature}, alpha={alpha}"
    )
    group = Distributed(device)
    if group.main:
        save(student)  # a loadable run from the start, like any other
    group.barrier()
    result = train(student, train_data, valid_data, recipe.train, out, save, objective=objective)
    if not group.main:  # under torchrun, the first process alone compares and reports
        return {}
    split = _split_for_quality(recipe.task, data_dir, tokenizer, block)
    teacher.model.cpu()
    rows = [
        _generator_row(run, data_dir, split, recipe.task, eval_limit)
        for run in (teacher, load_run(out))
    ]
    summary = _summary("generator", record, split, *rows, higher_is_better=False)
    summary["steps"] = result.step
    _write_report(out, summary)
    return summary


# -- intent classifiers -------------------------------------------------------------------------


@torch.no_grad()
def teacher_log_probabilities(classifier: Any, texts: list[str], batch: int = 256) -> Tensor:
    """(N, labels) log-probabilities of a trained intent classifier, in batches."""
    parts = [
        F.log_softmax(classifier.network(classifier.featurize(texts[i : i + batch])).float(), -1)
        for i in range(0, len(texts), batch)
    ]
    return torch.cat(parts)


def _parameters(classifier: Any) -> int:
    """The network's parameters, plus the frozen encoder's that computes an embed model's
    features (a SentenceEncoder's bound `encode`)."""
    count = sum(p.numel() for p in classifier.network.parameters())
    encoder = getattr(getattr(classifier.featurize, "__self__", None), "model", None)
    if isinstance(encoder, nn.Module):
        count += sum(p.numel() for p in encoder.parameters())
    return count


def _intent_row(classifier: Any, texts: list[str], gold: list[str], path: str) -> dict[str, Any]:
    """Top-1 accuracy (and with the threshold) and the p50 latency of one query at a time."""
    predictions = classifier.predict_features(classifier.featurize(texts), top_k=1)
    latencies = []
    for text in [texts[0], *texts[:200]]:  # the first query warms up
        started = time.perf_counter()
        classifier.predict([text])
        latencies.append(1000 * (time.perf_counter() - started))
    return {
        "run": path,
        "model": classifier.description.get("model", "?"),
        "parameters": _parameters(classifier),
        "quality": sum(p.top[0][0] == g for p, g in zip(predictions, gold, strict=True))
        / len(gold),
        "accuracy_with_threshold": sum(p.label == g for p, g in zip(predictions, gold, strict=True))
        / len(gold),
        "latency_ms": statistics.median(latencies[1:]),
    }


def distill_intent(
    teacher_dir: str | Path,
    recipe: Any,
    data_dir: str | Path,
    out_dir: str | Path,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    encoder: Any = None,
) -> dict[str, Any]:
    """Train the intent model of `recipe` (an IntentRecipe, no ensemble) on the teacher's soft
    labels mixed with the gold ones; calibrate its threshold; save it; compare it with the teacher.

    Args:
        teacher_dir: a run folder of `kefu train intent` (any model, an ensemble too).
        encoder: embed students only: an already loaded SentenceEncoder to reuse.
    Returns:
        The comparison written to distill.json (accuracy on the test split, else valid).
    """
    from kefu.nlu.intent import (
        Examples,
        IntentClassifier,
        check_labels,
        load_classifier,
        load_examples,
        train_model,
    )

    check_settings(temperature, alpha)
    if recipe.ensemble:
        raise KefuError(
            "the student recipe names an ensemble; a distilled student is one model: drop `ensemble:`"
        )
    teacher_dir, run_dir, data_dir = Path(teacher_dir), Path(out_dir), Path(data_dir)
    teacher = load_classifier(teacher_dir)
    texts, gold = load_examples(data_dir, "train")
    valid_texts, valid_gold = load_examples(data_dir, "valid")
    labels = check_labels(gold, valid_gold, "valid")
    unknown = sorted(set(labels) - set(teacher.labels))
    if unknown:
        raise KefuError(
            f"{data_dir} has intents the teacher {teacher_dir} never learnt: "
            f"{', '.join(unknown[:5])}; distil on the data the teacher was trained on"
        )
    index = {label: i for i, label in enumerate(labels)}
    note(f"computing the teacher's soft labels on {len(texts):,} training texts")
    columns = [teacher.labels.index(label) for label in labels]
    soft = teacher_log_probabilities(teacher, texts)[:, columns]  # (N, labels), student's order
    hard = torch.tensor([index[g] for g in gold])
    run_dir.mkdir(parents=True, exist_ok=True)
    examples = Examples(
        texts, hard.tolist(), valid_texts, [index[g] for g in valid_gold], len(labels)
    )

    def objective(logits: Tensor, inputs: Tensor, rows: Tensor) -> Tensor:
        rows = rows.cpu()
        guide, target = soft[rows].to(logits.device), hard[rows].to(logits.device)
        return distillation_loss(logits, guide, target, temperature, alpha)

    trained = train_model(examples, run_dir, recipe, encoder, objective)
    record = _record({"teacher": str(teacher_dir), "kind": "intent"}, temperature, alpha)
    classifier = IntentClassifier(
        trained.featurize,
        trained.network,
        labels,
        0.0,
        {**trained.description, "distilled_from": record},
    )
    if trained.valid_features is not None:
        classifier.calibrate(trained.valid_features, valid_gold, recipe.precision)
    classifier.save(run_dir)
    split = "test"
    test_texts, test_gold = load_examples(data_dir, split)
    if not test_texts:
        split, test_texts, test_gold = "valid", valid_texts, valid_gold
    rows = [
        _intent_row(model, test_texts, test_gold, str(path))
        for model, path in ((teacher, teacher_dir), (classifier, run_dir))
    ]
    summary = _summary("intent", record, split, *rows, higher_is_better=True)
    summary["threshold"] = classifier.threshold
    _write_report(run_dir, summary)
    return summary


def kept_text(summary: dict[str, Any]) -> str:
    """How the student's quality compares, in the words its metric needs."""
    if summary["quality"] == "accuracy":
        return f"it keeps {100 * summary['quality_kept']:.1f}% of the teacher's accuracy"
    ratio = summary["student"]["quality"] / summary["teacher"]["quality"]
    return f"its perplexity is {ratio:.2f}× the teacher's (lower is better)"


def distilled_quality(summary: dict[str, Any]) -> str:
    """One line for the command: the student's quality and speed against the teacher's."""
    q, t, s = summary["quality"], summary["teacher"], summary["student"]
    value = (lambda x: f"{100 * x:.2f}%") if q == "accuracy" else (lambda x: f"{x:.2f}")
    return (
        f"{q} on {summary['split']}: student {value(s['quality'])} vs teacher "
        f"{value(t['quality'])} ({kept_text(summary)}); "
        f"{summary['speed']}: student {s['latency_ms']:.2f} vs teacher {t['latency_ms']:.2f} "
        f"({summary['speedup']:.1f}× as fast)"
    )
