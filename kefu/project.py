"""A kefu project: a folder with `kefu.yaml`. `kefu init` writes one; `kefu build` builds it.

`build` ingests every data set, trains the tokenizer, builds and calibrates the knowledge base,
trains the intent models (one per language) and the generator, all into the project's build
folder — everything `kefu serve` loads. Each
step records a fingerprint of what it was made from (its config and the bytes of its inputs) in
`build/state.json` and is skipped on the next run when nothing changed, so a second `make run`
takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from kefu import __version__
from kefu.config import ProjectConfig, load_config
from kefu.console import note, note_rejects, settings
from kefu.data.folder import split_texts
from kefu.data.ingest import expand_inputs, ingest
from kefu.errors import KefuError
from kefu.files import write_text_atomically
from kefu.text.tokenizer import train_tokenizer

PROJECT_FILE = "kefu.yaml"


def load_project(path: str | Path) -> ProjectConfig:
    """The project config of a project folder (or of a kefu.yaml given directly)."""
    path = Path(path)
    if path.is_dir():
        path = path / PROJECT_FILE
    return load_config(path, kind="project")


@dataclass
class BuildResult:
    """What `build` made and what it found up to date."""

    build_dir: Path
    data: dict[str, Path] = field(default_factory=dict)
    tokenizer: Path | None = None
    kb: Path | None = None
    intents: dict[str, Path] = field(default_factory=dict)
    generator: Path | None = None
    rebuilt: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)


def _fingerprint(settings_json: str, files: list[Path] = (), parts: list[str] = ()) -> str:
    """A hash of what a step is made from: kefu's version, its settings, its inputs' bytes.

    File contents count, not their paths, so a project moved or built from another folder is
    still up to date.
    """
    digest = hashlib.sha256(f"kefu {__version__}\n{settings_json}".encode())
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()


def build(project: str | Path, force: bool = False) -> BuildResult:
    """Ingest the project's data sets and train its tokenizer, skipping what is up to date.

    Args:
        project: the project folder or its kefu.yaml.
        force: rebuild everything even if nothing changed.
    """
    config = load_project(project)
    result = BuildResult(Path(config.build_dir))
    state_path = result.build_dir / "state.json"
    state: dict[str, Any] = (
        {} if force or not state_path.exists() else json.loads(state_path.read_text())
    )

    def step(name: str, fingerprint: str, output: Path, make: Callable[[], object]) -> None:
        if state.get(name) == fingerprint and output.exists():
            result.up_to_date.append(name)
            note(f"[green]✓[/] {name} is up to date ({output})")
            return
        make()
        state[name] = fingerprint
        result.rebuilt.append(name)
        write_text_atomically(state_path, json.dumps(state, indent=2) + "\n")

    for name, source in config.data.items():
        out = result.build_dir / "data" / name
        settings_json = source.model_dump_json(exclude={"inputs"})
        fingerprint = _fingerprint(settings_json, expand_inputs(source.inputs))
        step(f"data/{name}", fingerprint, out / "stats.json", partial(ingest, source, out, name))
        result.data[name] = out

    names = config.tokenizer.data or list(config.data)
    folders = [result.data[n] for n in names]
    tokenizer_path = result.build_dir / "tokenizer.json"

    def make_tokenizer() -> None:
        note(f"training a {config.tokenizer.vocab_size}-token tokenizer on {', '.join(names)}")
        tokenizer = train_tokenizer(
            split_texts(folders),
            config.tokenizer.vocab_size,
            config.tokenizer.min_frequency,
            show_progress=not settings.quiet,
        )
        tokenizer.save(tokenizer_path)

    fingerprint = _fingerprint(
        config.tokenizer.model_dump_json(), parts=[state[f"data/{n}"] for n in names]
    )
    step("tokenizer", fingerprint, tokenizer_path, make_tokenizer)
    result.tokenizer = tokenizer_path

    kb_config = config.knowledge_base
    if kb_config.sources or kb_config.documents:
        kb_folder = result.build_dir / "kb"
        sources = [p for name in kb_config.sources for p in expand_inputs(config.data[name].inputs)]
        sources += [Path(path) for path in kb_config.documents]
        queries = [Path(kb_config.queries)] if kb_config.queries else []
        fingerprint = _fingerprint(
            kb_config.model_dump_json(include={"precision"}),
            [*_files_under(sources), *queries],
        )
        make = partial(
            build_knowledge_base, sources, kb_folder, kb_config.queries, kb_config.precision
        )
        step("kb", fingerprint, kb_folder / "manifest.json", make)
        result.kb = kb_folder

    if config.intents:
        for language, recipe_path in config.intents.recipes.items():
            folder = result.build_dir / "intents" / language
            data_name = config.intents.data
            fingerprint = _fingerprint(
                language, [Path(recipe_path)], parts=[state[f"data/{data_name}"]]
            )
            make = partial(
                build_intent_model, result.data[data_name], language, Path(recipe_path), folder
            )
            step(f"intents/{language}", fingerprint, folder / "model" / "config.json", make)
            result.intents[language] = folder / "model"

    if config.generator:
        folder = result.build_dir / "generator"
        data_name = config.generator.data
        fingerprint = _fingerprint(
            "generator",
            [Path(config.generator.recipe)],
            parts=[state[f"data/{data_name}"], state["tokenizer"]],
        )
        make = partial(
            build_generator,
            result.data[data_name],
            tokenizer_path,
            Path(config.generator.recipe),
            folder,
        )
        step("generator", fingerprint, folder / "config.yaml", make)
        result.generator = folder
    return result


def build_intent_model(data: Path, language: str, recipe_path: Path, folder: Path) -> None:
    """Train the intent model of one language (`all`: every language) into `folder`/model."""
    from kefu.nlu.intent import train_intent

    recipe = load_config(recipe_path, kind="intent")
    split_dir = data if language == "all" else _language_splits(data, language, folder / "data")
    shutil.rmtree(folder / "model", ignore_errors=True)
    note(f"training the {language} intent model ({recipe.model}, {recipe_path.name})")
    _, summary = train_intent(split_dir, folder / "model", recipe)
    note(
        f"{language} intent model: {summary['labels']} intents from {summary['train_examples']} "
        f"examples; out of scope below confidence {summary['threshold']:.2f}"
    )


def _language_splits(data: Path, language: str, out: Path) -> Path:
    """Copy the records of one language out of each split file of an ingested data set."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split in ("train", "valid", "test"):
        source = data / f"{split}.jsonl"
        if not source.exists():
            continue
        lines = [
            line
            for line in source.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("language") == language
        ]
        if split == "train" and not lines:
            raise KefuError(
                f"{source}: no training utterances in language {language!r}; remove "
                f"`intents.recipes.{language}` from kefu.yaml or add {language} utterances"
            )
        write_text_atomically(out / f"{split}.jsonl", "".join(f"{line}\n" for line in lines))
        counts[split] = len(lines)
    stats = {"kind": "intents", "language": language, "taken_from": str(data), "records": counts}
    write_text_atomically(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    return out


def build_generator(data: Path, tokenizer: Path, recipe_path: Path, folder: Path) -> None:
    """Train the generator from its recipe on the project's conversations and tokenizer."""
    from kefu.train.run import run_training

    recipe = load_config(recipe_path, kind="train").model_copy(
        update={"data": str(data), "tokenizer": str(tokenizer)}
    )
    shutil.rmtree(folder, ignore_errors=True)  # a run folder refuses to be trained over
    limit = recipe.train.time_limit_minutes
    note(
        f"training the generator ({recipe.arch}, {recipe_path.name})"
        + (f", at most {limit:g} minutes" if limit else "")
    )
    run_training(recipe, folder)


def _files_under(paths: list[Path]) -> list[Path]:
    """The files named, and the files inside the folders named, in a stable order."""
    return [
        f
        for p in paths
        for f in (sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    ]


def build_knowledge_base(
    sources: list[Path], folder: Path, queries: str | None, precision: float
) -> None:
    """Index the sources into `folder` (reusing its vectors) and calibrate its answer threshold."""
    from kefu.kb.evaluate import calibrate, paraphrase_queries, read_queries
    from kefu.kb.index import KnowledgeBase, build_kb

    report = build_kb(sources, folder)
    note_rejects(report.problems, f": see {folder / 'problems.jsonl'}")
    kb = KnowledgeBase.load(folder)
    try:
        held_out = read_queries(Path(queries), kb)[0] if queries else paraphrase_queries(kb)
        calibration = calibrate(kb, held_out, precision, queries or "FAQ paraphrases")
    except KefuError as err:  # a starter FAQ of five entries: searchable, but never sure
        note(f"[yellow]knowledge base not calibrated, so it will not answer directly[/]: {err}")
        return
    note(
        f"knowledge base: {report.chunks} chunks; direct answers at confidence ≥ "
        f"{calibration.threshold:.3f} ({100 * calibration.figures['answer_rate']:.0f}% of "
        f"held-out questions at {100 * precision:.0f}% precision)"
    )


def init(target: str | Path, name: str | None = None) -> Path:
    """Write a commented starter project into `target` (which must not hold a project yet)."""
    target = Path(target)
    if (target / PROJECT_FILE).exists():
        raise KefuError(
            f"{target / PROJECT_FILE} already exists; choose an empty folder or edit that file"
        )
    template = resources.files("kefu") / "templates" / "project"
    with resources.as_file(template) as source:
        clashes = [
            p.relative_to(source)
            for p in source.rglob("*")
            if p.is_file() and (target / p.relative_to(source)).exists()
        ]
        if clashes:
            names = ", ".join(str(c) for c in clashes)
            raise KefuError(
                f"{target} already has {names}; kefu init never overwrites files, choose another folder"
            )
        shutil.copytree(source, target, dirs_exist_ok=True)
    project_file = target / PROJECT_FILE
    project_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or target.resolve().name)
    text = project_file.read_text(encoding="utf-8").replace(
        "name: my_assistant", f"name: {project_name}"
    )
    project_file.write_text(text, encoding="utf-8")
    load_project(target)  # the starter must always be valid
    return project_file
