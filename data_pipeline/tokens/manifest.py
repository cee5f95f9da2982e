"""The typed manifests of a token dataset (atom.tokens/1) and a mixture (atom.mixture/1).

The tokenize and mix stages build these models and write them; the readers (`TokenDataset`,
`TokenMixture`) and the audit validate on read, so a manifest with a missing key, a string where a
count belongs or another schema version is refused naming the file and the key, not met later as a
KeyError. Semantic checks (does `kind` say dataset, do the counts match the files) stay in the audit:
the models only say what shape a manifest of this version has.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from core.manifest_model import ManifestModel, VersionedManifest
from data_pipeline.tokens.format import DATASET_SCHEMA, MIXTURE_SCHEMA


class FileRecord(ManifestModel):
    """A file the manifest vouches for: its path (relative, posix), size and sha256."""

    path: str
    bytes: int = Field(ge=0)
    sha256: str


class ProvenanceRecord(FileRecord):
    rows: int = Field(ge=0)


class Shard(ManifestModel):
    """One token shard, its document-end index, and where it starts in the dataset's token stream."""

    path: str
    bytes: int = Field(ge=0)
    sha256: str
    n_tokens: int = Field(ge=0)
    n_docs: int = Field(ge=0)
    token_offset: int = Field(ge=0)
    doc_offset: int = Field(ge=0)
    index: FileRecord


class DatasetSource(ManifestModel):
    tokens: int = Field(ge=0)
    docs: int = Field(ge=0)
    licenses: dict[str, int]


class DatasetTokenizer(ManifestModel):
    """The tokenizer the dataset was encoded with, as copied into the dataset's own directory."""

    eos_token: str
    eos_id: int
    pad_token: str | None
    pad_id: int | None
    vocab_size: int = Field(ge=1)
    sha256: str
    files: list[FileRecord]


class TokenStreamManifest(VersionedManifest):
    """What a dataset's and a mixture's manifest.json both state: identity, the recorded config, the token
    dtype and counts, and the digests of what the stage read."""

    schema_: str = Field(alias="schema")
    kind: str
    code_version: str
    config: dict[str, Any]
    dtype: str
    n_tokens: int = Field(ge=0)
    n_docs: int = Field(ge=0)
    inputs: dict[str, str] | None = None  # digests of what the stage read (older manifests lack it)


class DatasetManifest(TokenStreamManifest):
    """manifest.json of a token dataset: the shards, the provenance table, the sources and the tokenizer."""

    SCHEMAS: ClassVar[tuple[str, ...]] = (DATASET_SCHEMA,)

    eos_appended: bool
    shards: list[Shard]
    provenance: ProvenanceRecord
    sources: dict[str, DatasetSource]
    tokenizer: DatasetTokenizer
    curation: dict[str, Any] | None  # the curated run's identity and stage counts (CuratedRun.inherited)


class MixtureTokenizer(ManifestModel):
    sha256: str
    eos_id: int
    vocab_size: int = Field(ge=1)


class MixedDataset(ManifestModel):
    """A dataset the mixture draws from, pinned by the digest of its manifest."""

    path: str
    manifest_sha256: str
    n_tokens: int = Field(ge=0)
    n_docs: int = Field(ge=0)


class MixtureSource(ManifestModel):
    """What one source was asked for and what it got, with how often its documents repeat."""

    target_tokens: int = Field(ge=0)
    target_ratio: float
    tokens: int = Field(ge=0)
    docs: int = Field(ge=0)
    ratio: float
    available_tokens: int = Field(ge=0)
    available_docs: int = Field(ge=0)
    repetitions: float
    max_epoch: int = Field(ge=0)
    max_repetitions: float | None
    licenses: dict[str, int]


class ExcludedSource(ManifestModel):
    tokens: int = Field(ge=0)
    docs: int = Field(ge=0)


class Sequence(ManifestModel):
    array: FileRecord
    table: FileRecord


class MixtureManifest(TokenStreamManifest):
    """manifest.json of a mixture: the datasets, the realised per-source counts and the document sequence."""

    SCHEMAS: ClassVar[tuple[str, ...]] = (MIXTURE_SCHEMA,)

    tokenizer: MixtureTokenizer
    datasets: list[MixedDataset]
    target_tokens: int = Field(ge=0)
    sources: dict[str, MixtureSource]
    excluded_sources: dict[str, ExcludedSource]
    sequence: Sequence
    curation: list[dict[str, Any] | None]
