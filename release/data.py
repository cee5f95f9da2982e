"""The training data as a release carries it: manifests and provenance tables, no token shards.

A dataset (atom.tokens/1) travels as `manifest.json`, `provenance.parquet` and `croissant.json`; a
mixture (atom.mixture/1) as its `manifest.json`, `sequence.npy`, `sequence.parquet`, `croissant.json`
plus, under `datasets/NN/`, the manifest, provenance table and Croissant file of every dataset it draws
from. The shards themselves are pinned by the sha256 in those manifests (whose own sha256 the training
manifest pins), so whoever holds the dataset can check it is the one that trained (`atom audit --data`).

`StreamDocuments` is the document table of the training stream in stream order (cumulative token
ends, id, source, license), read from those files alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from core.config import ConfigError
from core.manifest import sha256_file
from data_pipeline.tokens import format as fmt
from data_pipeline.tokens.reader import document_keys

DATASETS_DIR = "datasets"


def dataset_dir(i: int) -> str:
    return f"{DATASETS_DIR}/{i:02d}"


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _dataset_files(manifest: dict[str, Any]) -> list[str]:
    return [fmt.MANIFEST, manifest["provenance"]["path"], fmt.CROISSANT]


def copy_data(src: Path, pinned_sha256: str, dst: Path) -> dict[str, Any]:
    """Copy the manifests and provenance of the data at `src` into `dst`; what was copied, described."""
    file = src / fmt.MANIFEST
    if not file.is_file():
        raise ConfigError(f"{src}: the run's data manifest is missing ({file}); a release needs it")
    if sha256_file(file) != pinned_sha256:
        raise ConfigError(f"{file}: sha256 differs from the one the training manifest recorded; "
                          "this is not the data the run trained on")
    manifest = json.loads(file.read_text(encoding="utf-8"))
    schema = manifest.get("schema")
    info: dict[str, Any] = {"schema": schema, "n_tokens": manifest["n_tokens"], "n_docs": manifest["n_docs"],
                            "manifest_sha256": pinned_sha256, "datasets": []}
    if schema == fmt.DATASET_SCHEMA:
        names = _dataset_files(manifest)
    elif schema == fmt.MIXTURE_SCHEMA:
        names = [fmt.MANIFEST, manifest["sequence"]["array"]["path"], manifest["sequence"]["table"]["path"],
                 fmt.CROISSANT]
        for i, entry in enumerate(manifest["datasets"]):
            ds_src = src / entry["path"]
            ds_file = ds_src / fmt.MANIFEST
            if not ds_file.is_file() or sha256_file(ds_file) != entry["manifest_sha256"]:
                raise ConfigError(f"{ds_file}: missing or not the dataset the mixture pinned")
            ds_manifest = json.loads(ds_file.read_text(encoding="utf-8"))
            for name in _dataset_files(ds_manifest):
                if (ds_src / name).is_file():
                    _copy(ds_src / name, dst / dataset_dir(i) / name)
            info["datasets"].append(dataset_dir(i))
    else:
        raise ConfigError(f"{file}: unknown data schema {schema!r}")
    for name in names:
        if not (src / name).is_file():
            if name == fmt.CROISSANT:
                continue
            raise ConfigError(f"{src / name}: missing (named by {file})")
        _copy(src / name, dst / name)
    return info


def tokenizer_dir(data_root: Path, manifest: dict[str, Any]) -> Path:
    """Where the tokenizer files of a dataset (or a mixture's first dataset) are."""
    if manifest.get("schema") == fmt.MIXTURE_SCHEMA:
        first = data_root / manifest["datasets"][0]["path"]
        return tokenizer_dir(first, json.loads((first / fmt.MANIFEST).read_text(encoding="utf-8")))
    return data_root / fmt.TOKENIZER_DIR


@dataclass
class StreamDocuments:
    """The documents of a training stream in stream order."""

    ends: np.ndarray  # cumulative token end of each document in the stream (int64)
    ids: np.ndarray
    sources: np.ndarray
    licenses: np.ndarray
    keys: np.ndarray  # uint64 document keys (`document_keys`): equal for every occurrence of a document

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], self.ends[:-1]]).astype(np.int64)

    @classmethod
    def read(cls, root: Path, manifest: dict[str, Any], dataset_roots: list[Path] | None = None) -> StreamDocuments:
        """From a dataset's provenance, or a mixture's sequence and its datasets' provenance tables."""
        if manifest.get("schema") == fmt.DATASET_SCHEMA:
            table = pq.read_table(root / manifest["provenance"]["path"], columns=["id", "source", "license",
                                                                                   "token_end"])
            return cls(table.column("token_end").to_numpy().astype(np.int64),
                       np.array(table.column("id").to_pylist(), dtype=object),
                       np.array(table.column("source").to_pylist(), dtype=object),
                       np.array(table.column("license").to_pylist(), dtype=object),
                       document_keys(manifest["provenance"]["sha256"], np.arange(table.num_rows)))
        seq = np.load(root / manifest["sequence"]["array"]["path"], mmap_mode="r", allow_pickle=False)
        n = len(seq)
        ids, sources, licenses = (np.empty(n, dtype=object) for _ in range(3))
        keys = np.zeros(n, dtype=np.uint64)
        roots = dataset_roots or [root / d["path"] for d in manifest["datasets"]]
        for d, ds_root in enumerate(roots):
            mask = seq["dataset"] == d
            if not mask.any():
                continue
            ds_manifest = json.loads((ds_root / fmt.MANIFEST).read_text(encoding="utf-8"))
            prov = pq.read_table(ds_root / ds_manifest["provenance"]["path"], columns=["id", "source", "license"])
            docs = seq["doc"][mask].astype(np.int64)
            keys[mask] = document_keys(ds_manifest["provenance"]["sha256"], docs)
            ids[mask] = np.array(prov.column("id").to_pylist(), dtype=object)[docs]
            sources[mask] = np.array(prov.column("source").to_pylist(), dtype=object)[docs]
            licenses[mask] = np.array(prov.column("license").to_pylist(), dtype=object)[docs]
        return cls(np.asarray(seq["end"], dtype=np.int64), ids, sources, licenses, keys)

    def summary(self, mask: np.ndarray) -> dict[str, Any]:
        """Documents selected by `mask`, counted by source and license."""
        by_source: dict[str, dict[str, Any]] = {}
        for source, lic in zip(self.sources[mask].tolist(), self.licenses[mask].tolist(), strict=True):
            entry = by_source.setdefault(str(source), {"docs": 0, "licenses": {}})
            entry["docs"] += 1
            key = lic if isinstance(lic, str) and lic.strip() else ""
            entry["licenses"][key] = entry["licenses"].get(key, 0) + 1
        for entry in by_source.values():
            entry["licenses"] = dict(sorted(entry["licenses"].items()))
        return {"docs": int(mask.sum()), "by_source": dict(sorted(by_source.items()))}


def allow_list(root: Path, manifest: dict[str, Any]) -> list[str] | None:
    """The license allow-list the data was built under (a mixture: the union over its datasets)."""
    if manifest.get("schema") == fmt.DATASET_SCHEMA:
        value = (manifest.get("config") or {}).get("allow_licenses")
        return sorted(value) if value is not None else None
    lists: list[list[str] | None] = []
    for entry in manifest.get("datasets", []):
        ds_file = root / entry["path"] / fmt.MANIFEST
        if ds_file.is_file():
            lists.append(allow_list(ds_file.parent, json.loads(ds_file.read_text(encoding="utf-8"))))
    if not lists or any(v is None for v in lists):
        return None
    return sorted({lic for v in lists for lic in v or []})
