"""`atom audit PATH`: verify a token dataset or mixture from its manifest, offline, with no trust in it.

Every file is re-hashed and re-sized; tokens and documents are recounted from the files themselves;
every document must have a license (within an allow-list when one is given); the provenance table must
cover every token exactly once and agree with the shards' document boundaries; per-source counts and
the Croissant metadata must agree with the manifest. A mixture is checked against the datasets it
references (whose manifests it pins by sha256), and those datasets are audited too.

`audit()` returns an `AuditReport` (a list of named checks, each on one file); the CLI prints it and
exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from data_pipeline.config import ConfigError, load_yaml_tree
from data_pipeline.manifest import sha256_file, verify_file_record
from data_pipeline.tokens import format as fmt

CHUNK = 1 << 24  # tokens per read when scanning a shard


@dataclass
class Check:
    file: str
    check: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        return f"{status} {self.file}: {self.check}" + (f": {self.detail}" if self.detail else "")


@dataclass
class AuditReport:
    path: str
    kind: str
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def failing_files(self) -> set[str]:
        return {c.file for c in self.failures}

    def add(self, file: str, check: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(file, check, bool(ok), "" if ok else detail))
        return bool(ok)

    def render(self, verbose: bool = False) -> str:
        lines = [c.line() for c in self.checks if verbose or not c.ok]
        facts = ", ".join(f"{k} {v}" for k, v in self.summary.items())
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"audit {self.path}: {self.kind}; {facts}; {len(self.checks)} checks, "
                     f"{len(self.failures)} failed: {verdict}")
        return "\n".join(lines)


def allow_list_from_config(path: str | Path) -> list[str] | None:
    """`allow_licenses` (top level or under `audit:`) of a YAML file, e.g. a tokenize config."""
    data = load_yaml_tree(Path(path), {})
    value = data.get("allow_licenses", (data.get("audit") or {}).get("allow_licenses"))
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
        raise ConfigError(f"{path}: key 'allow_licenses' must be a list of SPDX ids")
    return value


def audit(path: str | Path, allow_licenses: Iterable[str] | None = None) -> AuditReport:
    """Audit the dataset or mixture at `path` (its directory or manifest.json)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such dataset or mixture")
    root = path if path.is_dir() else path.parent
    report = AuditReport(str(path), "unknown")
    manifest = _read_manifest(root, report)
    if manifest is None:
        return report
    allow = sorted(set(allow_licenses)) if allow_licenses is not None else None
    if allow is None and isinstance(manifest.get("config"), dict):
        allow = manifest["config"].get("allow_licenses")  # the policy the data was built under
    if allow is not None:
        report.summary["allow_licenses"] = ",".join(allow)
    schema = manifest.get("schema")
    if schema == fmt.DATASET_SCHEMA:
        report.kind = "dataset"
        _audit_dataset(root, manifest, report, allow, prefix="")
    elif schema == fmt.MIXTURE_SCHEMA:
        report.kind = "mixture"
        _audit_mixture(root, manifest, report, allow)
    else:
        report.add(fmt.MANIFEST, "schema", False, f"unknown schema {schema!r}")
    return report


def _read_manifest(root: Path, report: AuditReport, prefix: str = "") -> dict[str, Any] | None:
    file = root / fmt.MANIFEST
    name = prefix + fmt.MANIFEST
    if not report.add(name, "present", file.is_file(), "missing"):
        return None
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.add(name, "readable JSON", False, str(exc))
        return None
    if not report.add(name, "readable JSON", isinstance(manifest, dict), "not a JSON object"):
        return None
    return manifest


def _file(report: AuditReport, record: dict[str, Any], root: Path, prefix: str) -> bool:
    problem = verify_file_record(record, root)
    return report.add(prefix + record["path"], "sha256 and size", problem is None, problem or "")


def _licenses(report: AuditReport, file: str, licenses: np.ndarray, ids: np.ndarray, allow) -> None:
    empty = np.array([not (isinstance(v, str) and v.strip()) for v in licenses], dtype=bool)
    report.add(file, "every document has a license", not empty.any(),
               f"{int(empty.sum())} document(s) without a license, e.g. {ids[empty][:3].tolist()}")
    if allow is not None:
        outside = sorted({v for v in licenses[~empty].tolist() if v not in allow})
        report.add(file, "licenses within allow-list", not outside,
                   f"{', '.join(outside)} not in allow-list {allow}")


def _audit_dataset(root: Path, manifest: dict[str, Any], report: AuditReport, allow, prefix: str) -> None:
    mname = prefix + fmt.MANIFEST
    try:
        dtype = np.dtype(fmt.DTYPES[manifest["dtype"]]).newbyteorder("<")
        shards = manifest["shards"]
        tok = manifest["tokenizer"]
        eos, vocab = int(tok["eos_id"]), int(tok["vocab_size"])
        n_tokens, n_docs = int(manifest["n_tokens"]), int(manifest["n_docs"])
    except (KeyError, TypeError, ValueError) as exc:
        report.add(mname, "required keys", False, f"malformed manifest: {exc!r}")
        return
    if not prefix:
        report.summary.update({"tokens": n_tokens, "documents": n_docs, "shards": len(shards)})
    report.add(mname, "vocab fits dtype", vocab <= np.iinfo(dtype).max + 1, f"vocab {vocab} > {dtype.name}")

    # Shards: hashes, then counts recounted from the files themselves.
    ends_global: list[np.ndarray] = []
    token_total = doc_total = 0
    listed = set()
    for i, shard in enumerate(shards):
        name = prefix + shard["path"]
        listed.update({shard["path"], shard["index"]["path"]})
        ok_tokens = _file(report, shard, root, prefix)
        ok_index = _file(report, shard["index"], root, prefix)
        report.add(mname, "shard offsets", shard["token_offset"] == token_total and shard["doc_offset"] == doc_total,
                   f"shards[{i}] ({shard['path']}): offsets {shard['token_offset']}/{shard['doc_offset']}, "
                   f"expected {token_total}/{doc_total}")
        token_total += int(shard["n_tokens"])
        doc_total += int(shard["n_docs"])
        ends = None
        if (root / shard["index"]["path"]).is_file():
            ends = np.fromfile(root / shard["index"]["path"], dtype="<u8")
            report.add(mname, "document count", len(ends) == shard["n_docs"],
                       f"shards[{i}] ({shard['path']}): {shard['n_docs']} documents recorded, "
                       f"{len(ends)} in {shard['index']['path']}")
            report.add(prefix + shard["index"]["path"], "document ends increase",
                       bool(len(ends) == 0 or (ends[0] > 0 and np.all(np.diff(ends.astype(np.int64)) > 0))),
                       "document ends are not strictly increasing")
            ends_global.append(ends.astype(np.int64) + int(shard["token_offset"]))
        path = root / shard["path"]
        if path.is_file():
            size = path.stat().st_size
            counted = size // dtype.itemsize
            report.add(mname, "token count", size % dtype.itemsize == 0 and counted == shard["n_tokens"],
                       f"shards[{i}] ({shard['path']}): {shard['n_tokens']} tokens recorded, {counted} in the file")
            if counted:
                tokens = np.memmap(path, dtype=dtype, mode="r")
                top = max(int(tokens[j:j + CHUNK].max()) for j in range(0, len(tokens), CHUNK))
                report.add(name, "token ids within vocab", top < vocab, f"id {top} >= vocab {vocab}")
                if ends is not None and ok_index and ok_tokens and len(ends) and int(ends[-1]) == counted:
                    at_end = tokens[ends.astype(np.int64) - 1]
                    report.add(name, "end-of-document token after every document", bool(np.all(at_end == eos)),
                               f"{int(np.sum(at_end != eos))} document(s) do not end with EOS id {eos}")
                elif ends is not None:
                    report.add(name, "index covers the shard", len(ends) > 0 and int(ends[-1]) == counted,
                               f"last document end {int(ends[-1]) if len(ends) else 0} != {counted} tokens")
    report.add(mname, "total tokens", token_total == n_tokens, f"n_tokens {n_tokens}, shards sum to {token_total}")
    report.add(mname, "total documents", doc_total == n_docs, f"n_docs {n_docs}, shards sum to {doc_total}")
    on_disk = {p.relative_to(root).as_posix() for p in (root / fmt.TOKENS_DIR).glob("*")} if (
        root / fmt.TOKENS_DIR).is_dir() else set()
    for extra in sorted(on_disk - listed):
        report.add(prefix + extra, "listed in manifest", False, "file in tokens/ that the manifest does not list")

    # Provenance: covers every token once, agrees with the shard indices, licenses, per-source counts.
    prov_rec = manifest.get("provenance", {})
    pname = prefix + prov_rec.get("path", fmt.PROVENANCE)
    if _file(report, prov_rec, root, prefix) or (root / prov_rec["path"]).is_file():
        try:
            table = pq.read_table(root / prov_rec["path"])
        except Exception as exc:  # noqa: BLE001 - any unreadable Parquet is a failed check
            report.add(pname, "readable Parquet", False, str(exc))
            table = None
        if table is not None:
            _audit_provenance(table, manifest, ends_global, report, pname, mname, allow, summarize=not prefix)

    sources = manifest.get("sources", {})
    for name, entry in sources.items():
        report.add(mname, "source has a license", bool(entry.get("licenses")) and all(
            isinstance(k, str) and k.strip() for k in entry.get("licenses", {})),
            f"source {name!r} lists no license")

    # Tokenizer and Croissant.
    for record in tok.get("files", []):
        _file(report, record, root, prefix)
    tok_json = root / fmt.TOKENIZER_DIR / "tokenizer.json"
    if tok_json.is_file():
        report.add(prefix + f"{fmt.TOKENIZER_DIR}/tokenizer.json", "tokenizer hash matches manifest",
                   sha256_file(tok_json) == tok.get("sha256"), "sha256 differs from manifest tokenizer.sha256")
    records = [prov_rec, *shards, *(s["index"] for s in shards), *tok.get("files", [])]
    _audit_croissant(root, records, report, prefix)


def _audit_provenance(table, manifest, ends_global, report, pname, mname, allow, summarize: bool) -> None:
    n_tokens, n_docs = int(manifest["n_tokens"]), int(manifest["n_docs"])
    missing = [c for c in fmt.PROVENANCE_SCHEMA.names if c not in table.column_names]
    if not report.add(pname, "columns", not missing, f"missing column(s) {missing}"):
        return
    report.add(pname, "one row per document", table.num_rows == n_docs,
               f"{table.num_rows} rows for {n_docs} documents")
    start = table.column("token_start").to_numpy()
    end = table.column("token_end").to_numpy()
    covers = (len(start) > 0 and start[0] == 0 and end[-1] == n_tokens and np.array_equal(start[1:], end[:-1])
              and bool(np.all(end > start)))
    report.add(pname, "covers every token exactly once", covers,
               "token ranges are not contiguous from 0 to n_tokens")
    report.add(pname, "doc_index in order", np.array_equal(table.column("doc_index").to_numpy(), np.arange(len(start))),
               "doc_index is not 0..n-1")
    if ends_global:
        shard_ends = np.concatenate(ends_global)
        report.add(pname, "agrees with shard document boundaries", np.array_equal(shard_ends, end),
                   "token_end differs from the shards' .ds.index")
        shard_of_doc = np.concatenate([np.full(s["n_docs"], s["path"], dtype=object) for s in manifest["shards"]])
        column = np.array(table.column("shard").to_pylist(), dtype=object)
        report.add(pname, "shard column", len(column) == len(shard_of_doc) and bool(np.all(column == shard_of_doc)),
                   "shard names differ from the manifest's shard order")
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    licenses = np.array(table.column("license").to_pylist(), dtype=object)
    _licenses(report, pname, licenses, ids, allow)
    lengths = end - start
    counted: dict[str, dict[str, Any]] = {}
    for source, lic, n in zip(table.column("source").to_pylist(), licenses.tolist(), lengths.tolist(), strict=True):
        entry = counted.setdefault(source, {"tokens": 0, "docs": 0, "licenses": {}})
        entry["tokens"] += n
        entry["docs"] += 1
        entry["licenses"][lic] = entry["licenses"].get(lic, 0) + 1
    recorded = manifest.get("sources", {})
    for source in sorted(set(counted) | set(recorded)):
        got, want = counted.get(source), recorded.get(source)
        same = got is not None and want is not None and all(
            got[k] == want.get(k) for k in ("tokens", "docs", "licenses"))
        report.add(mname, "per-source counts", same,
                   f"source {source!r}: manifest {_brief(want)}, provenance {_brief(got)}")
    if summarize:
        report.summary["sources"] = len(counted)
        report.summary["licenses"] = ",".join(sorted({v for v in licenses.tolist() if v}))


def _brief(entry) -> str:
    if entry is None:
        return "absent"
    return f"{entry.get('tokens')} tokens / {entry.get('docs')} docs / licenses {entry.get('licenses')}"


def _audit_croissant(root: Path, records: list[dict[str, Any]], report: AuditReport, prefix: str) -> None:
    name = prefix + fmt.CROISSANT
    file = root / fmt.CROISSANT
    if not report.add(name, "present", file.is_file(), "missing"):
        return
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
        listed = {d["contentUrl"]: d.get("sha256") for d in doc.get("distribution", [])}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        report.add(name, "readable JSON-LD", False, str(exc))
        return
    wrong = [r["path"] for r in records if listed.get(r["path"]) != r["sha256"]]
    report.add(name, "file hashes agree with manifest", not wrong, f"differs for {wrong[:5]}")


def _audit_mixture(root: Path, manifest: dict[str, Any], report: AuditReport, allow) -> None:
    mname = fmt.MANIFEST
    try:
        seq_rec = manifest["sequence"]["array"]
        table_rec = manifest["sequence"]["table"]
        n_tokens, n_docs = int(manifest["n_tokens"]), int(manifest["n_docs"])
        entries = manifest["datasets"]
    except (KeyError, TypeError, ValueError) as exc:
        report.add(mname, "required keys", False, f"malformed manifest: {exc!r}")
        return
    report.summary.update({"tokens": n_tokens, "documents": n_docs, "datasets": len(entries)})
    ok_seq = _file(report, seq_rec, root, "")
    _file(report, table_rec, root, "")

    # The referenced datasets: pinned by manifest hash, and audited themselves.
    provenance = []
    for i, entry in enumerate(entries):
        ds_root = root / entry["path"]
        prefix = entry["path"].rstrip("/") + "/"
        ds_manifest_file = ds_root / fmt.MANIFEST
        if not report.add(prefix + fmt.MANIFEST, "referenced dataset present", ds_manifest_file.is_file(), "missing"):
            provenance.append(None)
            continue
        report.add(prefix + fmt.MANIFEST, "dataset manifest pinned by mixture",
                   sha256_file(ds_manifest_file) == entry["manifest_sha256"],
                   f"sha256 differs from datasets[{i}].manifest_sha256 in the mixture manifest")
        ds_manifest = _read_manifest(ds_root, report, prefix)
        if ds_manifest is None:
            provenance.append(None)
            continue
        _audit_dataset(ds_root, ds_manifest, report, allow, prefix)
        try:
            prov = pq.read_table(ds_root / ds_manifest["provenance"]["path"])
            offsets = {s["path"]: (j, s["token_offset"]) for j, s in enumerate(ds_manifest["shards"])}
            provenance.append((prov, offsets))
        except Exception:  # noqa: BLE001 - reported by the dataset audit above
            provenance.append(None)

    if not (root / seq_rec["path"]).is_file() or not (root / table_rec["path"]).is_file():
        return
    try:
        seq = np.load(root / seq_rec["path"], mmap_mode="r", allow_pickle=False)
        table = pq.read_table(root / table_rec["path"])
    except Exception as exc:  # noqa: BLE001
        report.add(seq_rec["path"] if not ok_seq else table_rec["path"], "readable", False, str(exc))
        return
    if not report.add(seq_rec["path"], "record layout", seq.dtype == fmt.SEQUENCE_DTYPE, f"dtype {seq.dtype}"):
        return
    lengths = seq["length"].astype(np.int64)
    report.add(mname, "document count", len(seq) == n_docs, f"n_docs {n_docs}, {len(seq)} in {seq_rec['path']}")
    report.add(mname, "token count", int(lengths.sum()) == n_tokens,
               f"n_tokens {n_tokens}, {int(lengths.sum())} in {seq_rec['path']}")
    report.add(seq_rec["path"], "cumulative ends", np.array_equal(seq["end"].astype(np.int64), np.cumsum(lengths)),
               "end is not the running sum of length")
    report.add(table_rec["path"], "one row per sequence entry", table.num_rows == len(seq),
               f"{table.num_rows} rows, {len(seq)} entries")
    if table.num_rows == len(seq):
        same = (np.array_equal(table.column("n_tokens").to_numpy(), lengths)
                and np.array_equal(table.column("doc_index").to_numpy(), seq["doc"].astype(np.int64))
                and np.array_equal(table.column("epoch").to_numpy(), seq["epoch"].astype(np.int64)))
        report.add(table_rec["path"], f"agrees with {seq_rec['path']}", same, "documents, lengths or epochs differ")

    # Every referenced document exists with exactly these tokens, id, source and license.
    ids = np.empty(len(seq), dtype=object)
    sources = np.empty(len(seq), dtype=object)
    licenses = np.empty(len(seq), dtype=object)
    for d, prov in enumerate(provenance):
        mask = seq["dataset"] == d
        if prov is None or not mask.any():
            continue
        table_d, offsets = prov
        docs = seq["doc"][mask].astype(np.int64)
        if docs.max() >= table_d.num_rows:
            report.add(seq_rec["path"], "references existing documents", False,
                       f"document {int(docs.max())} beyond dataset {entries[d]['path']}")
            continue
        start = table_d.column("token_start").to_numpy()[docs]
        end = table_d.column("token_end").to_numpy()[docs]
        shard_names = np.array(table_d.column("shard").to_pylist(), dtype=object)[docs]
        shard_idx = np.array([offsets[s][0] for s in shard_names])
        shard_off = np.array([offsets[s][1] for s in shard_names])
        spans_ok = (np.array_equal(seq["shard"][mask].astype(np.int64), shard_idx)
                    and np.array_equal(seq["start"][mask].astype(np.int64), start - shard_off)
                    and np.array_equal(lengths[mask], end - start))
        report.add(seq_rec["path"], f"spans are whole documents of {entries[d]['path']}", spans_ok,
                   "shard/start/length differ from the dataset's provenance")
        ids[mask] = np.array(table_d.column("id").to_pylist(), dtype=object)[docs]
        sources[mask] = np.array(table_d.column("source").to_pylist(), dtype=object)[docs]
        licenses[mask] = np.array(table_d.column("license").to_pylist(), dtype=object)[docs]
    if table.num_rows == len(seq):
        for column, values in (("id", ids), ("source", sources), ("license", licenses)):
            report.add(table_rec["path"], f"{column} matches dataset provenance",
                       table.column(column).to_pylist() == values.tolist(), f"column {column} differs")
        _licenses(report, table_rec["path"], np.array(table.column("license").to_pylist(), dtype=object),
                  np.array(table.column("id").to_pylist(), dtype=object), allow)

    # Realised counts and the repetition cap, recounted.
    recorded = manifest.get("sources", {})
    for name, entry in recorded.items():
        mask = sources == name
        got_tokens, got_docs = int(lengths[mask].sum()), int(mask.sum())
        report.add(mname, "per-source counts", got_tokens == entry.get("tokens") and got_docs == entry.get("docs"),
                   f"source {name!r}: manifest {entry.get('tokens')} tokens / {entry.get('docs')} docs, "
                   f"sequence {got_tokens} / {got_docs}")
        cap, have = entry.get("max_repetitions"), entry.get("available_tokens")
        within = cap is not None and have and entry.get("target_tokens", float("inf")) <= cap * have
        report.add(mname, "repetition cap", bool(within),
                   f"source {name!r}: target {entry.get('target_tokens')} > cap {cap} x {have} available tokens")
        report.add(mname, "source has a license", bool(entry.get("licenses")), f"source {name!r} lists no license")
    unlisted = sorted({s for s in sources.tolist() if s is not None} - set(recorded))
    report.add(mname, "every sequence source recorded", not unlisted, f"sources {unlisted} not in manifest")
    report.summary["sources"] = len(recorded)
    report.summary["licenses"] = ",".join(sorted({v for v in licenses.tolist() if isinstance(v, str) and v}))
    _audit_croissant(root, [seq_rec, table_rec], report, "")
