"""release.json as typed models: written by `release.build`, read (and validated) by the audit and the card.

Every number here is recomputed by `atom audit` from the files it describes (docs/release.md lists
which file each comes from); the models only guarantee shape and types, so a hand-edited or
foreign-version release.json is refused with the key it got wrong instead of a KeyError mid-audit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from core.manifest_model import ManifestModel, VersionedManifest

SCHEMA = "atom.release/1"
RELEASE_JSON = "release.json"

class SourceSummary(ManifestModel):
    """A data source as its manifest states it: tokens, documents, documents per license."""

    tokens: int | None
    docs: int | None
    licenses: dict[str, int] | None

class StageData(ManifestModel):
    """The data a stage trained on, as copied under `dir` (a dataset or a mixture and its datasets)."""

    schema_: str | None = Field(alias="schema")
    n_tokens: int | None
    n_docs: int | None
    manifest_sha256: str
    dir: str
    sources: dict[str, SourceSummary]
    datasets: list[str]
    allow_licenses: list[str] | None
    path_at_training: str | None

class CheckpointEntry(ManifestModel):
    """One checkpoint of a stage's run (`checkpoints.json`)."""

    step: int
    tokens_seen: int | None
    path: str
    content_sha256: str | None
    complete: bool

class ParentLink(ManifestModel):
    """The checkpoint of the previous stage this stage started from."""

    stage: int
    step: int
    content_sha256: str

class DocumentCounts(ManifestModel):
    docs: int
    licenses: dict[str, int]

class TrainedDocuments(ManifestModel):
    """How many documents the stage's trained windows touched, per source and license."""

    docs: int
    by_source: dict[str, DocumentCounts]

class InLoopTask(ManifestModel):
    """One task of a stage's last in-loop benchmark eval (`release.scores.in_loop_benchmarks`)."""

    task: str
    eval_set: str
    instances: int | None
    primary_metric: str | None
    chance: float | None
    metrics: dict[str, float]

class InLoopBenchmarks(ManifestModel):
    step: int
    tasks: list[InLoopTask]

class Stage(ManifestModel):
    """One stage of the lineage (lineage/NN-KIND/): its budget, data, documents and final metrics."""

    index: int
    kind: str
    run_name: str
    dir: str
    files: list[str]
    config_sha256: str | None
    step: int
    checkpoint: CheckpointEntry
    parent: ParentLink | None
    seq_len: int
    global_batch: int
    seed: int
    tokens: int
    windows: int
    batches_per_epoch: int
    epochs: int
    trained_tokens_sha256: str
    data: StageData
    trained_documents: TrainedDocuments
    final_metrics: dict[str, int | float]
    evals: dict[str, Any] | None
    benchmarks: InLoopBenchmarks | None = None  # absent from releases made before in-loop benchmarks

class ModelInfo(ManifestModel):
    architecture: str
    params_total: int
    params_active: int
    flops_per_token: int
    config: dict[str, Any]  # MoEModelConfig.to_dict(); the audit validates it as that model

class WeightsOrigin(ManifestModel):
    file: str
    stage: int
    step: int
    content_sha256: str | None

class TokenizerInfo(ManifestModel):
    sha256: str
    eos_id: int
    pad_id: int | None
    vocab_size: int
    files: list[str]

class CodeVersion(ManifestModel):
    commit: str | None
    dirty: bool | None

class SourceDate(ManifestModel):
    """A trained source's version and when it was published (`release.contamination.trained_sources`)."""

    version: str | None
    released: str | None
    generated: bool

class EvalSetOverlap(ManifestModel):
    published: str
    predates_data: bool | None
    instances: int
    overlapping: int  # instances sharing an n-gram with a trained document
    documents: int  # trained documents sharing one

class ContaminationSummary(ManifestModel):
    """The benchmarks checked against every trained document at release time (`release.contamination`)."""

    ngram: int
    sources: dict[str, SourceDate]
    newest_source: str | None
    trained_documents: dict[str, int]  # per stage index
    eval_sets: dict[str, EvalSetOverlap]

class Release(VersionedManifest):
    """The whole of release.json."""

    SCHEMAS: ClassVar[tuple[str, ...]] = (SCHEMA,)

    schema_: Literal["atom.release/1"] = Field(alias="schema")
    name: str
    model: ModelInfo
    weights: WeightsOrigin
    tokenizer: TokenizerInfo
    stages: list[Stage]
    tokens_total: int
    steps_total: int
    code_version: CodeVersion
    packages: dict[str, str | None]
    generation: dict[str, Any]
    has_plot: bool
    contamination: ContaminationSummary | None = None  # absent from releases made before the check

def read_release(root: Path) -> Release:
    """`root/release.json`, validated; ManifestError names the key or the schema version it cannot read."""
    return Release.read(root / RELEASE_JSON)
