"""Scoring tasks: instances -> per-item records -> metrics, and the table that puts each score beside chance.

Multiple-choice metrics (each item's prediction is the argmax over its choices; ties go to the first):
- `acc`: of the summed log-likelihoods of the continuations;
- `acc_norm`: of the log-likelihoods divided by each choice's length in characters (lm-evaluation-harness's
  `acc_norm`, OLMES's `acc_per_char`); the primary metric of RC tasks, `acc` that of MC tasks;
- chance: the mean over items of 1 / number of choices.
Generative tasks: `exact_match` (GSM8K: the verifier; MATH-500: math-verify) is primary, `math_verify`
beside it; chance is 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.config import ConfigError
from evaluation.answers import gsm8k_correct, math_verify_correct
from evaluation.catalog import Task, get_task
from evaluation.config import TaskConfig, TasksConfig
from evaluation.instances import ChoiceItem, GenerateItem, Item, Quarantined, task_items, user_choice_items
from evaluation.scoring import (
    Codec,
    Logits,
    Progress,
    Request,
    Unencodable,
    greedy_generate,
    loglikelihoods,
)


@dataclass
class TaskResult:
    task: Task
    n: int
    metrics: dict[str, float]
    primary: str
    chance: float
    items: list[dict[str, Any]]  # per instance: what was scored and predicted
    instances: list[Item] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {"eval_set": self.task.eval_set, "kind": self.task.kind, "formulation": self.task.formulation,
               "instances": self.n, "primary_metric": self.primary, "score": self.metrics[self.primary],
               "chance": self.chance, "metrics": self.metrics, "quarantined": len(self.quarantined)}
        return out


def load_items(cfg: TaskConfig, quarantine: list[Quarantined], root: Path | None = None) -> tuple[Task, list[Item]]:
    """The first `cfg.limit` instances; read once per process (in-loop evals score the same ones each time)."""
    version = _file_version(cfg.path) if cfg.path is not None else None
    task, items, bad = _read_items(cfg.name, cfg.path, cfg.limit, root, version)
    quarantine.extend(bad)
    return task, list(items)


def _file_version(path: str) -> tuple[int, int] | None:
    """A user task file's (mtime, size): an edited file is read again, not served from the cache."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _read_items(name: str, path: str | None, limit: int | None, root: Path | None,
                version: tuple[int, int] | None) -> tuple[Task, tuple[Item, ...], tuple[Quarantined, ...]]:
    quarantine: list[Quarantined] = []
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"task {name}: eval file not found: {file}")
        items: list[Item] = list(user_choice_items(file, quarantine))
        if not items:
            raise ConfigError(f"task {name}: no readable instance in {file}")
        task = Task(name, file.name, "choice", str(file), "olmes_choice", "rc")
        items = items[:limit]
    else:
        task = get_task(name)
        items = task_items(task, quarantine, root, limit)
    return task, tuple(items), tuple(quarantine)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))


def score_choices(task: Task, items: Sequence[ChoiceItem], logits: Logits, codec: Codec, max_len: int,
                  batch_size: int, device: torch.device, show: bool) -> tuple[dict[str, float], list[dict]]:
    requests = [Request(c, x) for item in items for c, x in zip(item.contexts, item.continuations, strict=True)]
    try:
        scored = loglikelihoods(logits, codec, requests, max_len, batch_size, device,
                                Progress(task.name, len(requests), show))
    except Unencodable as exc:
        owner = [item for item in items for _ in item.continuations][exc.index]
        raise ConfigError(f"task {task.name}: instance {owner.id} of {task.source}: choice {exc.continuation!r} "
                          f"{exc.why}") from None
    records, at = [], 0
    for item in items:
        lls = [s.logprob for s in scored[at:at + len(item.continuations)]]
        at += len(item.continuations)
        norm = [ll / max(1, len(text)) for ll, text in zip(lls, item.choice_texts, strict=True)]
        records.append({"id": item.id, "gold": item.gold, "loglikelihoods": lls, "predicted": _argmax(lls),
                        "predicted_norm": _argmax(norm)})
    n = max(1, len(records))
    metrics = {"acc": sum(r["predicted"] == r["gold"] for r in records) / n,
               "acc_norm": sum(r["predicted_norm"] == r["gold"] for r in records) / n}
    return metrics, records


def score_generations(task: Task, items: Sequence[GenerateItem], logits: Logits, codec: Codec, max_len: int,
                      max_new_tokens: int, device: torch.device, show: bool) -> tuple[dict[str, float], list[dict]]:
    progress = Progress(task.name, len(items), show)
    records = []
    for item in items:
        text = greedy_generate(logits, codec, item.context, max_len, max_new_tokens, task.stop, device)
        if task.eval_set == "GSM8K":
            exact, symbolic = gsm8k_correct(text, item.answer), math_verify_correct(text, f"${item.answer}$")
        else:
            symbolic = math_verify_correct(text, item.solution)
            exact = symbolic
        records.append({"id": item.id, "generation": text, "reference": item.answer, "exact_match": exact,
                        "math_verify": symbolic})
        progress.advance(1)
    n = max(1, len(records))
    return ({"exact_match": sum(bool(r["exact_match"]) for r in records) / n,
             "math_verify": sum(bool(r["math_verify"]) for r in records) / n}, records)


def run_task(cfg: TaskConfig, logits: Logits, codec: Codec, max_len: int, batch_size: int, device: torch.device,
             show: bool = True, root: Path | None = None) -> TaskResult:
    quarantine: list[Quarantined] = []
    task, items = load_items(cfg, quarantine, root)
    if task.kind == "choice":
        choice_items = [i for i in items if isinstance(i, ChoiceItem)]
        metrics, records = score_choices(task, choice_items, logits, codec, max_len, batch_size, device, show)
    else:
        gen_items = [i for i in items if isinstance(i, GenerateItem)]
        metrics, records = score_generations(task, gen_items, logits, codec, max_len,
                                             cfg.max_new_tokens or task.max_new_tokens, device, show)
    return TaskResult(task, len(records), metrics, primary_metric(task), chance(items), records, items, quarantine)


def primary_metric(task: Task) -> str:
    """The score a task reports: MC letters by accuracy, RC by length-normalised accuracy, generation by match."""
    if task.kind != "choice":
        return "exact_match"
    return "acc" if task.formulation == "mc" else "acc_norm"


def chance(items: Sequence[Item]) -> float:
    """The expected accuracy of a uniform guess over each instance's choices (0 for generative tasks)."""
    choices = [len(i.continuations) for i in items if isinstance(i, ChoiceItem)]
    return sum(1 / n for n in choices) / len(choices) if choices else 0.0


def run_tasks(cfg: TasksConfig, logits: Logits, codec: Codec, max_len: int, device: torch.device,
              root: Path | None = None) -> list[TaskResult]:
    return [run_task(t, logits, codec, max_len, cfg.batch_size, device, cfg.progress, root) for t in cfg.tasks]


def table(results: Sequence[TaskResult]) -> list[str]:
    lines = [f"  {'task':<26}{'eval set':<16}{'n':>6}  {'metric':<12}{'score':>7}{'chance':>8}"]
    for r in results:
        lines.append(f"  {r.task.name:<26}{r.task.eval_set:<16}{r.n:>6}  {r.primary:<12}"
                     f"{r.metrics[r.primary]:>7.3f}{r.chance:>8.3f}")
    return lines
