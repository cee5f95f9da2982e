"""Decontamination: drop documents sharing a word n-gram with an evaluation set.

Eval sets are JSONL[.gz] files (any directory of them; HumanEval ships as `builtin`). From each row
the configured text fields are joined, normalised (lower case, `\\w+` words) and cut into n-grams;
a document with any n-gram in that index is dropped with reason `contaminated`, and its exclusion
record names the eval file, the row (task_id when present) and the shared n-gram.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import xxhash
from datatrove.data import Document

from data_pipeline.curate.steps.accounting import CurationStep
from data_pipeline.curate.steps.transform import cached

BUILTIN_EVALS = Path(__file__).resolve().parent.parent / "evals"
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngram_hashes(tokens: list[str], n: int):
    for i in range(len(tokens) - n + 1):
        yield xxhash.xxh64_intdigest(" ".join(tokens[i : i + n])), i


def eval_files(entries: list[str]) -> list[Path]:
    files: list[Path] = []
    for entry in entries:
        path = BUILTIN_EVALS if entry == "builtin" else Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz"))))
        else:
            files.append(path)
    return files


def build_index(entries: list[str], fields: list[str], n: int) -> dict[int, tuple[str, str]]:
    """n-gram hash -> (eval file name, row id) over every row of every eval file."""
    index: dict[int, tuple[str, str]] = {}
    for path in eval_files(entries):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                text = "\n".join(str(row[f]) for f in fields if isinstance(row, dict) and row.get(f))
                row_id = str(row.get("task_id", row.get("id", lineno))) if isinstance(row, dict) else str(lineno)
                for h, _ in ngram_hashes(words(text), n):
                    index.setdefault(h, (path.name, row_id))
    return index


class Decontaminate(CurationStep):
    name = "decontaminate"
    stage = "decontaminate"

    def __init__(self, counts_dir: str, exclusion_dir: str, evals: list[str], fields: list[str], n: int):
        super().__init__(counts_dir, exclusion_dir)
        self.evals = [str(BUILTIN_EVALS) if e == "builtin" else str(Path(e).resolve()) for e in evals]
        self.fields = fields
        self.n = n

    def setup(self) -> None:
        key = "decontam:" + json.dumps([self.evals, self.fields, self.n])
        self.index = cached(key, lambda: build_index(self.evals, self.fields, self.n))

    def process(self, doc: Document) -> Document | str:
        tokens = words(doc.text)
        for h, i in ngram_hashes(tokens, self.n):
            hit = self.index.get(h)
            if hit is not None:
                doc.metadata["_exclusion_extra"] = {"eval_file": hit[0], "eval_id": hit[1],
                                                    "ngram": " ".join(tokens[i : i + self.n])}
                return "contaminated"
        return doc
