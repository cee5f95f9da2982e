"""`atom audit RELEASE --contamination [SET ...] --data DIR`: did the model see the benchmarks?

For every stage of the release's lineage: the windows each step trained on are recomputed from the
release's training manifest (as the audit does), the documents behind them found in the release's
provenance, and their text read from the token shards of the data the stage trained on (`--data`, matched
to the stage by its manifest's sha256) and decoded with the release's tokenizer. Each trained document is
checked against the benchmarks' n-gram index (`evaluation.contamination`, the one curation decontaminates
with). The report gives, per eval set, how many instances overlap the trained documents, and per hit the
document's id, source and license, the stage and every training step that read it.

The release alone carries no text (only manifests and provenance), so the shards must be given; a stage
whose data is not given, or whose manifests are missing from the release, is named and the command exits 2.
Exit 1 when any overlap is found, 0 when none.

`atom release` runs the same check on the data the run trained on and records its summary in release.json
(`contamination`): per eval set its publication date, whether it predates the newest source of the training
data (only sets made after the data can be free of contamination by construction), its instances and how
many of them overlap the trained documents. The card shows it; `atom audit --data` recomputes it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ConfigError
from core.manifest import sha256_file
from data_pipeline.tokens import format as fmt
from evaluation.catalog import EVAL_SETS
from evaluation.contamination import BENCHMARK_TASKS, NgramIndex, benchmark_index, benchmark_texts, words
from release import data as rdata
from release.lineage import TRAIN_MANIFEST, touched_documents, trained_windows
from release.manifest import Release, Stage, read_release

NGRAM = 12  # curation's default: a hit here is a document curation would have removed


@dataclass
class Hit:
    eval_set: str
    instance: str
    document: str
    source: str
    license: str
    stage: int
    steps: list[int]


@dataclass
class ContaminationReport:
    release: Path
    eval_sets: list[str]
    instances: dict[str, int]  # per eval set, how many it has
    trained_documents: dict[int, int]  # per stage
    hits: list[Hit] = field(default_factory=list)

    def overlapping(self, eval_set: str) -> int:
        return len({h.instance for h in self.hits if h.eval_set == eval_set})

    def to_dict(self) -> dict[str, Any]:
        return {"release": str(self.release), "ngram": NGRAM, "trained_documents": self.trained_documents,
                "eval_sets": {s: {"instances": self.instances[s], "overlapping": self.overlapping(s),
                                  "published": EVAL_SETS[s].published} for s in self.eval_sets},
                "hits": [h.__dict__ for h in self.hits]}

    def render(self) -> str:
        docs = ", ".join(f"stage {i}: {n}" for i, n in sorted(self.trained_documents.items()))
        lines = [f"contamination of {self.release}: trained documents ({docs}) against {len(self.eval_sets)} "
                 f"eval sets, word {NGRAM}-grams",
                 f"  {'eval set':<16}{'instances':>10}{'overlapping':>13}  published"]
        for s in self.eval_sets:
            lines.append(f"  {s:<16}{self.instances[s]:>10}{self.overlapping(s):>13}  {EVAL_SETS[s].published}")
        for h in self.hits:
            steps = ", ".join(map(str, h.steps))
            lines.append(f"  HIT {h.eval_set} instance {h.instance}: document {h.document} (source {h.source}, "
                         f"license {h.license}), stage {h.stage} steps {steps}")
        lines.append("CONTAMINATED" if self.hits else "CLEAN: no trained document shares an n-gram with these sets")
        return "\n".join(lines)


def trained_sources(root: Path, release: Release) -> dict[str, dict[str, Any]]:
    """Every source the stages trained on, from the curation records their data manifests carry:
    {name: {version, released (YYYY-MM-DD or None), generated (synthetic: no crawled text)}}."""
    out: dict[str, dict[str, Any]] = {}
    for stage in release.stages:
        manifest = json.loads(_require(root / stage.data.dir / fmt.MANIFEST, f"stage {stage.index}'s data manifest")
                              .read_text(encoding="utf-8"))
        curation = manifest.get("curation")
        for record in curation if isinstance(curation, list) else [curation]:
            for name, entry in ((record or {}).get("sources") or {}).items():
                if name in stage.data.sources:
                    out[name] = {"version": entry.get("version"), "released": entry.get("released"),
                                 "generated": "generators" in entry}
    return dict(sorted(out.items()))


def newest_source(sources: dict[str, dict[str, Any]]) -> str | None:
    dated = [(entry["released"], name) for name, entry in sources.items() if entry["released"]]
    return max(dated)[1] if dated else None


def predates(published: str, released: str | None) -> bool | None:
    """Whether an eval set (published YYYY-MM) appeared no later than the data's newest source (YYYY-MM-DD):
    a set of the same month counts as older. None when no source is dated."""
    return None if released is None else published <= released[:7]


def set_dates(eval_sets: list[str], sources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per eval set: its publication month and whether it predates the newest trained source."""
    newest = newest_source(sources)
    released = sources[newest]["released"] if newest else None
    return {s: {"published": EVAL_SETS[s].published, "predates_data": predates(EVAL_SETS[s].published, released)}
            for s in eval_sets}


def release_summary(report: ContaminationReport, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """release.json's `contamination`: what the card's contamination table shows."""
    dates = set_dates(report.eval_sets, sources)
    return {"ngram": NGRAM, "sources": sources, "newest_source": newest_source(sources),
            "trained_documents": {str(k): v for k, v in sorted(report.trained_documents.items())},
            "eval_sets": {s: {**dates[s], "instances": report.instances[s], "overlapping": report.overlapping(s),
                              "documents": len({(h.stage, h.document) for h in report.hits if h.eval_set == s})}
                          for s in report.eval_sets}}


def _given(stage: Stage, data: list[Path]) -> Path:
    for path in data:
        file = path / fmt.MANIFEST
        if file.is_file() and sha256_file(file) == stage.data.manifest_sha256:
            return path
    raise ConfigError(f"stage {stage.index} ({stage.kind}) trained on data whose manifest has sha256 "
                      f"{stage.data.manifest_sha256[:16]}...; pass that dataset or mixture with --data "
                      f"(given: {', '.join(map(str, data)) or 'none'})")


def _dataset_roots(data_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    if manifest.get("schema") == fmt.DATASET_SCHEMA:
        return []
    return [data_dir / rdata.dataset_dir(i) for i in range(len(manifest["datasets"]))]


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the release ({what}); the contamination report needs it")
    return path


def steps_reading(start: int, end: int, windows: np.ndarray, steps: list[int], seq_len: int) -> list[int]:
    """The steps whose windows read any token of [start, end): window w reads tokens [w*L, w*L + L]."""
    lo = windows * seq_len
    reads = (lo < end) & (lo + seq_len >= start)
    return [steps[i] for i in np.flatnonzero(reads.any(axis=1)).tolist()]


def contamination(release_dir: str | Path, data: list[str] | None, eval_sets: list[str] | None = None
                  ) -> ContaminationReport:
    from tokenizers import Tokenizer

    from data_pipeline.tokens.reader import open_tokens
    from pretrain.train_manifest import read_train_manifest

    root = Path(release_dir)
    release: Release = read_release(root)
    unknown = sorted(set(eval_sets or []) - set(BENCHMARK_TASKS))
    if unknown:
        raise ConfigError(f"--contamination: unknown eval set(s) {', '.join(unknown)}; "
                          f"available: {', '.join(BENCHMARK_TASKS)}")
    names = list(eval_sets or BENCHMARK_TASKS)
    given = [Path(d) for d in data or []]
    sources = {stage.index: _given(stage, given) for stage in release.stages}  # every missing input first
    tokenizer = Tokenizer.from_file(str(_require(root / "tokenizer.json", "the tokenizer")))
    # every set: the index curation built and cached (built once per machine); a subset: its own, small index
    index = benchmark_index(NGRAM) if set(names) == set(BENCHMARK_TASKS) else NgramIndex(benchmark_texts(names), NGRAM)
    counted = Counter(eval_set for eval_set, _ in index.owners)
    report = ContaminationReport(root, names, {s: counted[s] for s in names}, {})
    for stage in release.stages:
        data_dir = root / stage.data.dir
        manifest = json.loads(_require(data_dir / fmt.MANIFEST, f"stage {stage.index}'s data manifest").read_text(
            encoding="utf-8"))
        header, records = read_train_manifest(_require(root / stage.dir / TRAIN_MANIFEST, "a training manifest"))
        records = [r for r in records if r["step"] <= stage.step]
        windows = trained_windows(header, records)
        docs = rdata.StreamDocuments.read(data_dir, manifest, _dataset_roots(data_dir, manifest))
        trained = np.flatnonzero(touched_documents(docs.ends, windows, stage.seq_len))
        report.trained_documents[stage.index] = len(trained)
        tokens = open_tokens(sources[stage.index])
        starts = docs.starts
        for d in trained.tolist():
            start, end = int(starts[d]), int(docs.ends[d])
            text = tokenizer.decode(tokens.read(start, end - start).tolist(), skip_special_tokens=False)
            for eval_set, instance in index.owners_hit(words(text)):
                report.hits.append(Hit(eval_set, instance, str(docs.ids[d]), str(docs.sources[d]),
                                       str(docs.licenses[d]), stage.index,
                                       steps_reading(start, end, windows, [int(r["step"]) for r in records],
                                                     stage.seq_len)))
    return report
