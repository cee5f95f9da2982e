"""Read token datasets and mixtures without loading them: what the trainer and `atom audit` use.

    ds = open_tokens("runs/quickstart/tokens")      # a dataset or a mixture directory (or its manifest)
    ds.spans()          # ordered TokenSpan(path, dtype, start, end, doc_index): the token stream
    ds.locate(i)        # global token index -> DocRef(id, source, license, ...) in O(log n)
    ds.read(start, n)   # n tokens of the stream from `start`
    ds.occurrences()    # every document occurrence in stream order, with a stable key (arrays, one entry each)

Token files and document-end indices are np.memmap'd; provenance rows are read one Parquet row group
at a time; the only per-shard state in memory is a few integers. Memory stays flat as data grows.
"""

from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from core.config import ConfigError
from data_pipeline.tokens import format as fmt
from data_pipeline.tokens.manifest import DatasetManifest, MixtureManifest

MAX_OPEN = 64


@dataclass(frozen=True)
class TokenSpan:
    """Tokens [start, end) of a flat token file and its uint64 cumulative document ends (.ds.index)."""

    path: Path
    dtype: str
    start: int
    end: int
    doc_index: Path | None = None

    @property
    def n_tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    index_path: Path
    dtype: str
    n_tokens: int
    n_docs: int
    token_offset: int  # global position of the shard's first token
    doc_offset: int  # global index of the shard's first document


@dataclass(frozen=True)
class DocRef:
    """Where a token came from. For a mixture, `position`/`epoch` place the document in the mixture."""

    doc_index: int
    id: str
    source: str
    license: str
    url: str
    shard: str
    token_start: int  # in the dataset's global token order
    token_end: int
    position: int | None = None
    epoch: int | None = None
    mixture_start: int | None = None


@dataclass(frozen=True)
class Occurrences:
    """Every document occurrence of a stream, in stream order. `key` names the document itself: the same in
    every dataset or mixture that holds it (a mixture may repeat a document; each repeat has the same key)."""

    key: np.ndarray  # uint64
    start: np.ndarray  # int64, first token of the occurrence in the stream
    length: np.ndarray  # int64, tokens (EOS included)


def document_keys(dataset_sha256: str, doc_index: np.ndarray) -> np.ndarray:
    """uint64 keys of documents `doc_index` of the dataset whose provenance table hashes to `dataset_sha256`:
    a splitmix64 finaliser over (dataset, index), so keys are well spread and independent of any run."""
    x = np.asarray(doc_index, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(int(dataset_sha256[:16], 16))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(directory, manifest) for a dataset/mixture directory or its manifest.json."""
    path = Path(path)
    file = path / fmt.MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path}: no {fmt.MANIFEST}")
    return file.parent, json.loads(file.read_text(encoding="utf-8"))


class MemmapCache:
    """A small LRU of open memmaps, so a corpus of thousands of shards keeps few files open."""

    def __init__(self, capacity: int = MAX_OPEN):
        self.capacity = capacity
        self.maps: OrderedDict[tuple[Path, str], np.ndarray] = OrderedDict()  # memmaps (empty: zeros)

    def get(self, path: Path, dtype: str) -> np.ndarray:
        key = (path, dtype)
        if key not in self.maps:
            if path.stat().st_size == 0:
                self.maps[key] = np.zeros(0, dtype=dtype)
            else:
                self.maps[key] = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
            if len(self.maps) > self.capacity:
                self.maps.popitem(last=False)
        self.maps.move_to_end(key)
        return self.maps[key]


class TokenDataset:
    """A tokenized dataset (schema atom.tokens/1)."""

    def __init__(self, path: str | Path):
        self.root, self.manifest = read_manifest(path)
        if self.manifest.get("schema") != fmt.DATASET_SCHEMA:
            raise ConfigError(f"{self.root}: not a token dataset (schema {self.manifest.get('schema')!r})")
        DatasetManifest.parse(self.manifest, str(self.root / fmt.MANIFEST))
        self.dtype: str = self.manifest["dtype"]
        self.eos_id: int = self.manifest["tokenizer"]["eos_id"]
        self.n_tokens: int = self.manifest["n_tokens"]
        self.n_docs: int = self.manifest["n_docs"]
        self.shards = [
            ShardInfo(self.root / s["path"], self.root / s["index"]["path"], self.dtype, s["n_tokens"],
                      s["n_docs"], s["token_offset"], s["doc_offset"])
            for s in self.manifest["shards"]
        ]
        self._token_offsets = [s.token_offset for s in self.shards]
        self._doc_offsets = [s.doc_offset for s in self.shards]
        self._maps = MemmapCache()
        self._provenance: pq.ParquetFile | None = None
        self._group_starts: list[int] = []
        self._group_cache: tuple[int, dict[str, list]] | None = None

    # --- tokens and boundaries -------------------------------------------------------------
    def tokens(self, shard: int) -> np.ndarray:
        return self._maps.get(self.shards[shard].path, self.dtype)

    def doc_ends(self, shard: int) -> np.ndarray:
        """uint64 cumulative document ends within shard `shard` (memmap)."""
        return self._maps.get(self.shards[shard].index_path, "uint64")

    def spans(self) -> list[TokenSpan]:
        return [TokenSpan(s.path, self.dtype, 0, s.n_tokens, s.index_path) for s in self.shards]

    def document_keys(self, doc_index: np.ndarray) -> np.ndarray:
        return document_keys(self.manifest["provenance"]["sha256"], doc_index)

    def occurrences(self) -> Occurrences:
        ends = [self.doc_ends(k).astype(np.int64) + s.token_offset for k, s in enumerate(self.shards)]
        end = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        start = np.concatenate([[0], end[:-1]]).astype(np.int64)
        return Occurrences(self.document_keys(np.arange(self.n_docs)), start, end - start)

    def doc_span(self, doc_index: int) -> tuple[int, int, int]:
        """(shard, start, end) of document `doc_index` within its shard."""
        if not 0 <= doc_index < self.n_docs:
            raise IndexError(f"document {doc_index} out of range [0, {self.n_docs})")
        shard = bisect.bisect_right(self._doc_offsets, doc_index) - 1
        k = doc_index - self._doc_offsets[shard]
        ends = self.doc_ends(shard)
        return shard, int(ends[k - 1]) if k else 0, int(ends[k])

    def doc_tokens(self, doc_index: int) -> np.ndarray:
        shard, start, end = self.doc_span(doc_index)
        return self.tokens(shard)[start:end]

    def read(self, start: int, length: int) -> np.ndarray:
        out = []
        while length > 0:
            if not 0 <= start < self.n_tokens:
                raise IndexError(f"token {start} out of range [0, {self.n_tokens})")
            shard = bisect.bisect_right(self._token_offsets, start) - 1
            local = start - self._token_offsets[shard]
            take = min(length, self.shards[shard].n_tokens - local)
            out.append(np.asarray(self.tokens(shard)[local:local + take]))
            start, length = start + take, length - take
        return np.concatenate(out) if out else np.zeros(0, self.dtype)

    # --- provenance --------------------------------------------------------------------------
    def doc_of_token(self, token: int) -> int:
        if not 0 <= token < self.n_tokens:
            raise IndexError(f"token {token} out of range [0, {self.n_tokens})")
        shard = bisect.bisect_right(self._token_offsets, token) - 1
        local = token - self._token_offsets[shard]
        k = int(np.searchsorted(self.doc_ends(shard), local, side="right"))
        return self._doc_offsets[shard] + k

    def provenance(self, doc_index: int) -> dict[str, Any]:
        """The provenance row of a document (one Parquet row group is read and cached)."""
        if self._provenance is None:
            self._provenance = pq.ParquetFile(self.root / self.manifest["provenance"]["path"])
            meta = self._provenance.metadata
            starts, total = [], 0
            for g in range(meta.num_row_groups):
                starts.append(total)
                total += meta.row_group(g).num_rows
            self._group_starts = starts
        group = bisect.bisect_right(self._group_starts, doc_index) - 1
        if self._group_cache is None or self._group_cache[0] != group:
            self._group_cache = (group, self._provenance.read_row_group(group).to_pydict())
        rows = self._group_cache[1]
        i = doc_index - self._group_starts[group]
        return {name: values[i] for name, values in rows.items()}

    def document(self, doc_index: int) -> DocRef:
        row = self.provenance(doc_index)
        return DocRef(doc_index, row["id"], row["source"], row["license"], row["url"], row["shard"],
                      row["token_start"], row["token_end"])

    def locate(self, token: int) -> DocRef:
        """The document global token `token` belongs to: O(log shards + log docs per shard)."""
        return self.document(self.doc_of_token(token))


class TokenMixture:
    """A mixture (schema atom.mixture/1): a sequence of documents of one or more token datasets."""

    def __init__(self, path: str | Path):
        self.root, self.manifest = read_manifest(path)
        if self.manifest.get("schema") != fmt.MIXTURE_SCHEMA:
            raise ConfigError(f"{self.root}: not a mixture (schema {self.manifest.get('schema')!r})")
        MixtureManifest.parse(self.manifest, str(self.root / fmt.MANIFEST))
        self.datasets = [TokenDataset(self.root / d["path"]) for d in self.manifest["datasets"]]
        self.dtype: str = self.manifest["dtype"]
        self.n_tokens: int = self.manifest["n_tokens"]
        self.n_docs: int = self.manifest["n_docs"]
        self.sequence = np.load(self.root / self.manifest["sequence"]["array"]["path"], mmap_mode="r")

    def spans(self) -> list[TokenSpan]:
        """The token stream as shard spans, in mixture order (adjacent pieces of one shard merged).

        Vectorised over the sequence (a memory-mapped array): Python objects only for the merged runs."""
        seq = self.sequence
        if len(seq) == 0:
            return []
        first_shard = np.cumsum([0] + [len(d.shards) for d in self.datasets])
        shard_id = first_shard[seq["dataset"].astype(np.int64)] + seq["shard"].astype(np.int64)
        start = seq["start"].astype(np.int64)
        end = start + seq["length"].astype(np.int64)
        # A run continues while the next piece is in the same shard and starts where this one ends.
        breaks = np.flatnonzero((shard_id[1:] != shard_id[:-1]) | (start[1:] != end[:-1])) + 1
        firsts = np.concatenate([[0], breaks])
        lasts = np.concatenate([breaks - 1, [len(seq) - 1]])
        shards = [s for d in self.datasets for s in d.shards]
        return [TokenSpan(shards[k].path, self.dtype, a, b, shards[k].index_path)
                for k, a, b in zip(shard_id[firsts].tolist(), start[firsts].tolist(), end[lasts].tolist(),
                                   strict=True)]

    def occurrences(self) -> Occurrences:
        key = np.zeros(len(self.sequence), dtype=np.uint64)
        for d, dataset in enumerate(self.datasets):
            mine = self.sequence["dataset"] == d
            key[mine] = dataset.document_keys(self.sequence["doc"][mine])
        end = self.sequence["end"].astype(np.int64)
        length = self.sequence["length"].astype(np.int64)
        return Occurrences(key, end - length, length)

    def position_of_token(self, token: int) -> int:
        if not 0 <= token < self.n_tokens:
            raise IndexError(f"token {token} out of range [0, {self.n_tokens})")
        return int(np.searchsorted(self.sequence["end"], token, side="right"))

    def doc_tokens(self, position: int) -> np.ndarray:
        rec = self.sequence[position]
        start = int(rec["start"])
        return self.datasets[rec["dataset"]].tokens(int(rec["shard"]))[start:start + int(rec["length"])]

    def locate(self, token: int) -> DocRef:
        position = self.position_of_token(token)
        rec = self.sequence[position]
        ref = self.datasets[rec["dataset"]].document(int(rec["doc"]))
        return DocRef(**{**ref.__dict__, "position": position, "epoch": int(rec["epoch"]),
                         "mixture_start": int(rec["end"]) - int(rec["length"])})

    def read(self, start: int, length: int) -> np.ndarray:
        out = []
        while length > 0:
            position = self.position_of_token(start)
            rec = self.sequence[position]
            offset = start - (int(rec["end"]) - int(rec["length"]))
            take = min(length, int(rec["length"]) - offset)
            out.append(np.asarray(self.doc_tokens(position)[offset:offset + take]))
            start, length = start + take, length - take
        return np.concatenate(out) if out else np.zeros(0, self.dtype)


def open_tokens(path: str | Path) -> TokenDataset | TokenMixture:
    """A dataset or a mixture, by the schema of its manifest."""
    root, manifest = read_manifest(path)
    if manifest.get("schema") == fmt.MIXTURE_SCHEMA:
        return TokenMixture(root)
    return TokenDataset(root)
