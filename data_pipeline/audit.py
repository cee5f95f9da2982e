"""`atom audit PATH`: verify a curation run, token dataset or mixture from its manifest, offline, with no trust
in it (curation runs: data_pipeline/curate/audit.py).

Every file is re-hashed and re-sized, every license checked (within an allow-list when one is given),
and every number the manifest states is recomputed from the files it describes; a value that differs
fails a check on the manifest named by the field (`tokenizer.eos_id`, `shards[2].n_tokens`, ...):

    dataset manifest field          recomputed from
    kind, eos_appended              the schema (dataset, true); EOS checked after every document
    tokenizer.eos_*/pad_*/vocab     tokenizer/ (its files hash-checked first); shards are read with these
    tokenizer.sha256, files         sha256 and size of tokenizer/*
    dtype                           choose_dtype(vocab from tokenizer/, config.dtype)
    shards[i] path/index.path       the layout tokens/NNNNN.ds(.index)
    shards[i] bytes, sha256         the file (bytes alone off, with the sha256 right: the manifest fails)
    shards[i] n_tokens, n_docs      file size / dtype, length of the .ds.index
    shards[i] token/doc_offset      running sums of the shards before it
    config.shard_tokens             each shard closes at the first document that reaches it
    n_tokens, n_docs                sums over the shard files
    provenance bytes/sha256, rows   the file, its row count (rows also = documents, ranges = shards)
    sources.*                       tokens, docs and licenses counted from provenance.parquet
    curation                        the curated run's manifest.json (named by the run's config.yaml) when present
    config, code_version            not recomputable: recorded as given

    mixture manifest field          recomputed from
    datasets[i] manifest_sha256     sha256 of that manifest.json (the dataset is audited in full)
    datasets[i] n_tokens, n_docs    that (audited) dataset manifest
    dtype, tokenizer, curation      the dataset manifests
    sequence.array/table            the files; the table agrees with sequence.npy row by row
    n_tokens, n_docs                sequence.npy
    target_tokens, sources.*        config (mix.targets), sequence.npy + dataset provenance: targets,
    excluded_sources                ratios, tokens, docs, available, repetitions, max_epoch, licenses

croissant.json (both) is regenerated from manifest.json and compared byte for byte; its name pins the
manifest's sha256. A mixture is checked against the datasets it references, which are audited too.

`audit_data()` returns an `AuditReport` (a list of named checks, each on one file); the CLI prints it and
exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from core.audit import AuditReport, agree, differences
from core.config import ConfigError, load_yaml_tree
from core.manifest import sha256_file, verify_file_record
from core.manifest_model import ManifestError, VersionedManifest
from core.rundir import CONFIG_FILE
from data_pipeline.tokenizer.train import TOKENIZER_FILE
from data_pipeline.tokens import format as fmt
from data_pipeline.tokens.curated import CURATION_SCHEMA
from data_pipeline.tokens.manifest import DatasetManifest, MixtureManifest

CHUNK = 1 << 24  # tokens per read when scanning a shard
# The provenance columns the dataset audit reads (url and source_version are not recounted: left on disk).
PROVENANCE_AUDITED = ["doc_index", "id", "source", "license", "shard", "token_start", "token_end"]


def allow_list_from_config(path: str | Path) -> list[str] | None:
    """`allow_licenses` (top level or under `audit:`) of a YAML file, e.g. a tokenize config."""
    data = load_yaml_tree(Path(path), {})
    value = data.get("allow_licenses", (data.get("audit") or {}).get("allow_licenses"))
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
        raise ConfigError(f"{path}: key 'allow_licenses' must be a list of SPDX ids")
    return value


def audit_data(path: str | Path, allow_licenses: Iterable[str] | None = None) -> AuditReport:
    """Audit the curation run, dataset or mixture at `path` (its directory or manifest.json)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such curation run, dataset or mixture")
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
    elif schema == CURATION_SCHEMA:
        report.kind, auditor = _curation_auditor(manifest)
        auditor(root, manifest, report, allow)
    else:
        report.add(fmt.MANIFEST, "schema", False, f"unknown schema {schema!r}")
    return report


def _curation_auditor(manifest: dict[str, Any]) -> tuple[str, Callable[..., None]]:
    """The kind of run that wrote an atom.curation/1 manifest (curate, synth or longdocs), and its audit."""
    from data_pipeline.curate.audit import audit_curation
    from data_pipeline.longdocs_audit import audit_longdocs
    from data_pipeline.synthetic.audit import audit_synthetic

    if manifest.get("kind") == "synthetic":
        return "synthetic run", audit_synthetic
    stages = manifest.get("stages")
    if isinstance(stages, list) and stages and isinstance(stages[-1], dict) and stages[-1].get("name") == "longdocs":
        return "longdocs run", audit_longdocs
    return "curation run", audit_curation


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


def _valid(report: AuditReport, model: type[VersionedManifest], manifest: dict[str, Any], root: Path,
           mname: str) -> bool:
    """The manifest has every key of its schema version with the type it states (else one failed check
    naming the keys, and the checks that read them are not run)."""
    try:
        model.parse(manifest, str(root / fmt.MANIFEST))
    except ManifestError as exc:
        return report.add(mname, "schema", False, str(exc))
    return report.add(mname, "schema", True, "")


def _file(report: AuditReport, record: dict[str, Any], root: Path, prefix: str, field: str) -> bool:
    """The file a manifest record (at `field`) names has its sha256 and size. A file with the recorded
    sha256 but another size means the manifest's `bytes` was edited: that fails on the manifest."""
    path = root / record["path"]
    if path.is_file() and path.stat().st_size != record.get("bytes") and sha256_file(path) == record.get("sha256"):
        report.add(prefix + fmt.MANIFEST, f"{field}.bytes", False,
                   f"{fmt.MANIFEST} states {record.get('bytes')!r}, {record['path']} (whose sha256 "
                   f"is the recorded one) has {path.stat().st_size}")
        return True
    problem = verify_file_record(record, root)
    return report.add(prefix + record["path"], "sha256 and size", problem is None, problem or "")


def _licenses(report: AuditReport, file: str, licenses: pa.ChunkedArray | pa.Array, ids: pa.ChunkedArray | pa.Array,
              allow) -> None:
    """Every document has a non-blank license, within the allow-list when there is one (Arrow compute: no
    Python object per document)."""
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(licenses), ""), True)
    n_empty = pc.sum(empty).as_py() or 0
    report.add(file, "every document has a license", n_empty == 0,
               f"{n_empty} document(s) without a license, e.g. {pc.filter(ids, empty)[:3].to_pylist()}")
    if allow is not None:
        outside = sorted(v for v in pc.unique(pc.filter(licenses, pc.invert(empty))).to_pylist() if v not in allow)
        report.add(file, "licenses within allow-list", not outside,
                   f"{', '.join(outside)} not in allow-list {allow}")


def _tokenizer_facts(root: Path, tok: dict[str, Any], report: AuditReport, prefix: str) -> dict[str, Any] | None:
    """eos/pad tokens and ids and the vocab size as the dataset's own copy of the tokenizer gives them, or
    None when those files are not the ones the manifest pins (then they are what fails)."""
    from data_pipeline.tokens.encoding import open_tokenizer

    ok = all([_file(report, record, root, prefix, f"tokenizer.files[{j}]")
              for j, record in enumerate(tok.get("files", []))])
    tok_json = root / fmt.TOKENIZER_DIR / TOKENIZER_FILE
    if not tok_json.is_file():
        return None
    ok &= report.add(prefix + f"{fmt.TOKENIZER_DIR}/{TOKENIZER_FILE}", "tokenizer hash matches manifest",
                     sha256_file(tok_json) == tok.get("sha256"), "sha256 differs from manifest tokenizer.sha256")
    if not ok:
        return None
    try:
        _, info, _ = open_tokenizer(root / fmt.TOKENIZER_DIR, "auto")
    except Exception as exc:  # noqa: BLE001 - a pinned tokenizer that does not load is a failed check
        report.add(prefix + fmt.TOKENIZER_DIR, "loads", False, f"{type(exc).__name__}: {exc}")
        return None
    return info


def _audit_dataset(root: Path, manifest: dict[str, Any], report: AuditReport, allow, prefix: str) -> None:
    mname = prefix + fmt.MANIFEST
    if not _valid(report, DatasetManifest, manifest, root, mname):
        return
    shards = manifest["shards"]
    tok = manifest["tokenizer"]
    eos, vocab, dtype_name = tok["eos_id"], tok["vocab_size"], manifest["dtype"]
    n_tokens, n_docs = manifest["n_tokens"], manifest["n_docs"]
    config = manifest["config"]
    if not report.add(mname, "dtype", dtype_name in fmt.DTYPES,
                      f"dtype {dtype_name!r} is not one of {sorted(fmt.DTYPES)}"):
        return
    if not prefix:
        report.summary.update({"tokens": n_tokens, "documents": n_docs, "shards": len(shards)})
    agree(report, mname, "kind", manifest.get("kind"), "dataset", f"schema {fmt.DATASET_SCHEMA}")
    agree(report, mname, "eos_appended", manifest.get("eos_appended"), True, f"schema {fmt.DATASET_SCHEMA}")
    eos, vocab, dtype = _dataset_tokenizer(root, manifest, report, prefix, (eos, vocab, dtype_name))

    # Shards: hashes, then counts recounted from the files themselves.
    ends_global: list[np.ndarray] = []
    token_total = doc_total = 0
    listed = set()
    for i, shard in enumerate(shards):
        listed.update({shard["path"], shard["index"]["path"]})
        ends, tokens_in, docs_in = _dataset_shard(root, shard, i, len(shards), token_total, doc_total, config,
                                                  (eos, vocab, dtype), report, prefix)
        if ends is not None:
            ends_global.append(ends.astype(np.int64) + token_total)
        token_total += tokens_in
        doc_total += docs_in
    report.add(mname, "total tokens", token_total == n_tokens,
               f"n_tokens {n_tokens}, the shards hold {token_total}")
    report.add(mname, "total documents", doc_total == n_docs,
               f"n_docs {n_docs}, the shards' indices hold {doc_total}")
    on_disk = {p.relative_to(root).as_posix() for p in (root / fmt.TOKENS_DIR).glob("*")} if (
        root / fmt.TOKENS_DIR).is_dir() else set()
    for extra in sorted(on_disk - listed):
        report.add(prefix + extra, "listed in manifest", False, "file in tokens/ that the manifest does not list")

    _dataset_provenance(root, manifest, report, prefix, allow, ends_global, (token_total, doc_total))
    for name, entry in manifest.get("sources", {}).items():
        report.add(mname, "source has a license", bool(entry.get("licenses")) and all(
            isinstance(k, str) and k.strip() for k in entry.get("licenses", {})),
            f"source {name!r} lists no license")
    _audit_curation(root, manifest, report, mname, summarize=not prefix)
    _audit_croissant(root, manifest, report, prefix)


def _dataset_tokenizer(root: Path, manifest: dict[str, Any], report: AuditReport, prefix: str,
                       stated: tuple[int, int, str]) -> tuple[int, int, np.dtype]:
    """EOS id, vocabulary and token dtype as the tokenizer's hashed files give them (the shards are then
    read with those, so an edited manifest value fails here, on manifest.json, not on the shards)."""
    mname, tok, config = prefix + fmt.MANIFEST, manifest["tokenizer"], manifest.get("config") or {}
    eos, vocab, dtype_name = stated
    facts = _tokenizer_facts(root, tok, report, prefix)
    if facts is not None:
        for key, value in facts.items():
            agree(report, mname, f"tokenizer.{key}", tok.get(key), value,
                  f"{prefix}{fmt.TOKENIZER_DIR}/{TOKENIZER_FILE}")
        eos, vocab = int(facts["eos_id"]), int(facts["vocab_size"])
        try:
            expected_dtype = fmt.choose_dtype(vocab, config.get("dtype", "auto"))
        except ConfigError as exc:
            expected_dtype = f"none ({exc})"
        agree(report, mname, "dtype", dtype_name, expected_dtype,
               f"vocab {vocab} and config.dtype {config.get('dtype', 'auto')!r}")
        dtype_name = expected_dtype if expected_dtype in fmt.DTYPES else dtype_name
    dtype = np.dtype(fmt.DTYPES[dtype_name]).newbyteorder("<")
    report.add(mname, "vocab fits dtype", vocab <= np.iinfo(fmt.DTYPES[dtype_name]).max + 1,
               f"vocab {vocab} > {dtype.name}")
    return eos, vocab, dtype


def _dataset_shard(root: Path, shard: dict[str, Any], i: int, n_shards: int, token_total: int, doc_total: int,
                   config: dict[str, Any], ids: tuple[int, int, np.dtype], report: AuditReport,
                   prefix: str) -> tuple[np.ndarray | None, int, int]:
    """One shard and its index: hashes, offsets, counts, ids, EOS placement, the shard_tokens split.
    Returns its document ends (None without an index) and the tokens and documents it holds."""
    eos, vocab, dtype = ids
    mname, name = prefix + fmt.MANIFEST, prefix + shard["path"]
    agree(report, mname, f"shards[{i}].path", [shard["path"], shard["index"]["path"]],
           [fmt.shard_name(i), fmt.shard_name(i) + fmt.INDEX_SUFFIX], f"the shard layout of {fmt.DATASET_SCHEMA}")
    ok_tokens = _file(report, shard, root, prefix, f"shards[{i}]")
    ok_index = _file(report, shard["index"], root, prefix, f"shards[{i}].index")
    report.add(mname, "shard offsets", shard["token_offset"] == token_total and shard["doc_offset"] == doc_total,
               f"shards[{i}].token_offset/doc_offset ({shard['path']}): {shard['token_offset']}/"
               f"{shard['doc_offset']}, the shards before it sum to {token_total}/{doc_total}")
    ends = None
    if (root / shard["index"]["path"]).is_file():
        ends = np.fromfile(root / shard["index"]["path"], dtype="<u8")
        report.add(mname, "document count", len(ends) == shard["n_docs"],
                   f"shards[{i}].n_docs ({shard['path']}): {shard['n_docs']} documents recorded, "
                   f"{len(ends)} in {shard['index']['path']}")
        report.add(prefix + shard["index"]["path"], "document ends increase",
                   bool(len(ends) == 0 or (ends[0] > 0 and np.all(np.diff(ends.astype(np.int64)) > 0))),
                   "document ends are not strictly increasing")
    docs_in = len(ends) if ends is not None else int(shard["n_docs"])
    path = root / shard["path"]
    if not path.is_file():
        return ends, int(shard["n_tokens"]), docs_in
    size = path.stat().st_size
    counted = size // dtype.itemsize
    report.add(mname, "token count", size % dtype.itemsize == 0 and counted == shard["n_tokens"],
               f"shards[{i}].n_tokens ({shard['path']}): {shard['n_tokens']} tokens recorded, "
               f"{size} bytes = {counted} {dtype.name} tokens in the file")
    cap = config.get("shard_tokens")
    if isinstance(cap, int) and ends is not None and len(ends) and int(ends[-1]) == counted:
        # tokenize closes a shard at the first document that brings it to shard_tokens
        before_last = int(ends[-2]) if len(ends) > 1 else 0
        report.add(mname, "config.shard_tokens", before_last < cap and (i == n_shards - 1 or counted >= cap),
                   f"shards[{i}] ({shard['path']}) holds {counted} tokens, {before_last} before its last "
                   f"document: not how tokenize splits at config.shard_tokens {cap}")
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
    return ends, counted, docs_in


def _dataset_provenance(root: Path, manifest: dict[str, Any], report: AuditReport, prefix: str, allow,
                        ends_global: list[np.ndarray], totals: tuple[int, int]) -> None:
    """Provenance covers every token once and agrees with the shard indices, licenses and per-source counts."""
    prov_rec = manifest.get("provenance", {})
    pname = prefix + prov_rec.get("path", fmt.PROVENANCE)
    if _file(report, prov_rec, root, prefix, "provenance") or (root / prov_rec["path"]).is_file():
        try:
            table = read_provenance(root / prov_rec["path"])
        except Exception as exc:  # noqa: BLE001 - any unreadable Parquet is a failed check
            report.add(pname, "readable Parquet", False, str(exc))
            return
        audit_provenance(table, manifest, ends_global, report, pname, prefix + fmt.MANIFEST, allow,
                         summarize=not prefix, totals=totals)


def read_provenance(path: Path) -> pa.Table:
    """The provenance columns the audit recounts (url and source_version stay on disk: at a million documents
    they are most of the table's memory); the column check still sees every column of the file, as
    `schema_names` in the table's metadata."""
    schema = pq.read_schema(path)
    table = pq.read_table(path, columns=[c for c in PROVENANCE_AUDITED if c in schema.names])
    return table.replace_schema_metadata({b"schema_names": json.dumps(schema.names).encode()})


def _curated_run_of(root: Path) -> Path | None:
    """The curated run a dataset was tokenized from, as its run directory's config.yaml names it.

    The manifest names its input by content only (the same data built anywhere gives the same manifest),
    so the path comes from the run's own config, which no digest covers."""
    saved = root / CONFIG_FILE
    if not saved.is_file():
        return None
    try:
        config = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    source = config.get("input") if isinstance(config, dict) else None
    return Path(source) if isinstance(source, str) else None


def _audit_curation(root: Path, manifest: dict[str, Any], report: AuditReport, mname: str,
                    summarize: bool) -> None:
    """`curation` is copied from the curated run's manifest.json: compare it with that file when it is
    where the dataset's run config says (a dataset copied elsewhere notes that it was not compared)."""
    from data_pipeline.tokens.curated import MANIFEST as CURATED_MANIFEST
    from data_pipeline.tokens.curated import CuratedRun

    stated = manifest.get("curation")
    located = _curated_run_of(root)
    if located is None:
        if summarize:
            report.summary["curation"] = f"not compared (no {CONFIG_FILE} naming the curated run)"
        return
    source = located
    file = source / CURATED_MANIFEST
    if not file.is_file():
        if summarize:
            report.summary["curation"] = f"not compared ({file} not found)"
        return
    try:
        curated = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.add(str(file), "readable JSON", False, str(exc))
        return
    if not report.add(str(file), "a curation manifest", isinstance(curated, dict), "not a JSON object"):
        return
    expected = CuratedRun(Path(source), [], curated, sha256_file(file), 0).inherited()
    agree(report, mname, "curation", stated, expected, str(file))
    if summarize:
        report.summary["curation"] = f"compared with {file}"


def audit_provenance(table, manifest, ends_global, report, pname, mname, allow, summarize: bool,
                      totals: tuple[int, int] | None = None) -> None:
    """The provenance table against the shards (`ends_global`: each shard's document ends, global) and the
    manifest; `totals` (tokens, documents) as recounted from the shards, else the manifest's."""
    n_tokens, n_docs = totals or (int(manifest["n_tokens"]), int(manifest["n_docs"]))
    names = json.loads((table.schema.metadata or {}).get(b"schema_names", b"null")) or table.column_names
    missing = [c for c in fmt.PROVENANCE_SCHEMA.names if c not in names]
    if not report.add(pname, "columns", not missing, f"missing column(s) {missing}"):
        return
    report.add(pname, "one row per document", table.num_rows == n_docs,
               f"{table.num_rows} rows for {n_docs} documents")
    agree(report, mname, "provenance.rows", manifest["provenance"].get("rows"), table.num_rows, pname)
    start = table.column("token_start").to_numpy()
    end = table.column("token_end").to_numpy()
    covers = (len(start) > 0 and start[0] == 0 and end[-1] == n_tokens and np.array_equal(start[1:], end[:-1])
              and bool(np.all(end > start)))
    report.add(pname, "covers every token exactly once", covers,
               "token ranges are not contiguous from 0 to n_tokens")
    report.add(pname, "doc_index in order", np.array_equal(table.column("doc_index").to_numpy(), np.arange(len(start))),
               "doc_index is not 0..n-1")
    if ends_global and len(ends_global) == len(manifest["shards"]):
        shard_ends = np.concatenate(ends_global)
        report.add(pname, "agrees with shard document boundaries", np.array_equal(shard_ends, end),
                   "token_end differs from the shards' .ds.index")
        # The shard column, dictionary-encoded: one small list of names and an index per document.
        encoded = pc.dictionary_encode(table.column("shard")).combine_chunks()
        order = {s["path"]: i for i, s in enumerate(manifest["shards"])}
        code = np.array([order.get(name, -1) for name in encoded.dictionary.to_pylist()], dtype=np.int64)
        column = code[encoded.indices.to_numpy(zero_copy_only=False)] if len(encoded) else np.zeros(0, np.int64)
        expected = np.repeat(np.arange(len(ends_global)), [len(e) for e in ends_global])
        report.add(pname, "shard column", np.array_equal(column, expected),
                   "shard names differ from the manifest's shard order")
    _licenses(report, pname, table.column("license"), table.column("id"), allow)
    sizes = pa.table({"source": table.column("source"), "license": table.column("license"),
                      "n": pa.array(end - start, pa.int64())})
    counted: dict[str, dict[str, Any]] = {}
    for row in sizes.group_by(["source", "license"]).aggregate([("n", "sum"), ("n", "count")]).to_pylist():
        entry = counted.setdefault(row["source"], {"tokens": 0, "docs": 0, "licenses": {}})
        entry["tokens"] += row["n_sum"]
        entry["docs"] += row["n_count"]
        entry["licenses"][row["license"]] = row["n_count"]
    counted = {name: {**v, "licenses": dict(sorted(v["licenses"].items()))} for name, v in sorted(counted.items())}
    agree(report, mname, "sources", manifest.get("sources", {}), counted, pname)
    if summarize:
        report.summary["sources"] = len(counted)
        report.summary["licenses"] = ",".join(sorted(v for v in pc.unique(table.column("license")).to_pylist() if v))


def _audit_croissant(root: Path, manifest: dict[str, Any], report: AuditReport, prefix: str) -> None:
    """croissant.json is a function of manifest.json: regenerate it and compare byte for byte."""
    from data_pipeline.croissant import croissant_text

    name = prefix + fmt.CROISSANT
    file = root / fmt.CROISSANT
    if not report.add(name, "present", file.is_file(), "missing"):
        return
    try:
        expected = croissant_text(root, manifest)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        report.add(prefix + fmt.MANIFEST, "describable as Croissant", False, f"malformed manifest: {exc!r}")
        return
    raw = file.read_bytes()
    if raw == expected.encode():
        report.add(name, "regenerated from manifest.json byte for byte", True)
        return
    try:
        diffs = differences(json.loads(raw), json.loads(expected), "")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.add(name, "readable JSON-LD", False, str(exc))
        return
    named = [d for d in diffs if d[0] == ".name"] or [d for d in diffs if d[0] == ".citeAs"]
    other = [d for d in diffs if d[0] not in (".name", ".citeAs")]
    detail = "; ".join(f"{p.lstrip('.') or 'layout'}: {fmt.CROISSANT} states {a!r}, {fmt.MANIFEST} gives {b!r}"
                       for p, a, b in other[:4])
    if named:
        detail += ("; and " if detail else "") + (
            f"its name {named[0][1]!r} pins another {fmt.MANIFEST} than this one ({named[0][2]!r}): one of the two "
            "changed after they were written")
    detail = detail or "same JSON, other bytes (not the canonical JSON the build writes)"
    report.add(name, "regenerated from manifest.json byte for byte", False, detail)


Provenance = tuple[pa.Table, dict[str, tuple[int, int]]]  # a dataset's provenance, shard path -> (index, offset)


def _audit_mixture(root: Path, manifest: dict[str, Any], report: AuditReport, allow) -> None:
    mname = fmt.MANIFEST
    if not _valid(report, MixtureManifest, manifest, root, mname):
        return
    seq_rec = manifest["sequence"]["array"]
    table_rec = manifest["sequence"]["table"]
    n_tokens, n_docs = manifest["n_tokens"], manifest["n_docs"]
    entries = manifest["datasets"]
    report.summary.update({"tokens": n_tokens, "documents": n_docs, "datasets": len(entries)})
    ok_seq = _file(report, seq_rec, root, "", "sequence.array")
    _file(report, table_rec, root, "", "sequence.table")
    provenance, ds_manifests = _mixture_datasets(root, entries, report, allow)
    _mixture_inherited(manifest, entries, ds_manifests, report)
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
    _mixture_sequence(seq, table, lengths, manifest, report)
    ids, sources, licenses = _mixture_documents(seq, lengths, provenance, entries, report, seq_rec["path"])
    if table.num_rows == len(seq):
        for column, values in (("id", ids), ("source", sources), ("license", licenses)):
            report.add(table_rec["path"], f"{column} matches dataset provenance",
                       table.column(column).combine_chunks().cast(pa.string()).equals(values),
                       f"column {column} differs")
        _licenses(report, table_rec["path"], table.column("license"), table.column("id"), allow)

    # Realised counts and the repetition cap, recounted.
    recorded = manifest.get("sources", {})
    for name, entry in recorded.items():
        cap, have = entry.get("max_repetitions"), entry.get("available_tokens")
        within = cap is not None and have and entry.get("target_tokens", float("inf")) <= cap * have
        report.add(mname, "repetition cap", bool(within),
                   f"source {name!r}: target {entry.get('target_tokens')} > cap {cap} x {have} available tokens")
        report.add(mname, "source has a license", bool(entry.get("licenses")), f"source {name!r} lists no license")
    unlisted = sorted({s for s in pc.unique(sources).to_pylist() if s is not None} - set(recorded))
    report.add(mname, "every sequence source recorded", not unlisted, f"sources {unlisted} not in manifest")
    if all(p is not None for p in provenance):
        _mixture_sources(manifest, seq, sources, licenses, [p[0] for p in provenance if p is not None], report)
    report.summary["sources"] = len(recorded)
    report.summary["licenses"] = ",".join(sorted(v for v in pc.unique(licenses).to_pylist() if v))
    _audit_croissant(root, manifest, report, "")


def _mixture_datasets(root: Path, entries: list[dict[str, Any]], report: AuditReport,
                      allow) -> tuple[list[Provenance | None], list[dict[str, Any] | None]]:
    """The referenced datasets: pinned by manifest hash and audited themselves; their provenance and manifests."""
    provenance: list[Provenance | None] = []
    ds_manifests: list[dict[str, Any] | None] = []
    for i, entry in enumerate(entries):
        ds_root = root / entry["path"]
        prefix = entry["path"].rstrip("/") + "/"
        ds_manifest_file = ds_root / fmt.MANIFEST
        if not report.add(prefix + fmt.MANIFEST, "referenced dataset present", ds_manifest_file.is_file(), "missing"):
            provenance.append(None)
            ds_manifests.append(None)
            continue
        report.add(prefix + fmt.MANIFEST, "dataset manifest pinned by mixture",
                   sha256_file(ds_manifest_file) == entry["manifest_sha256"],
                   f"sha256 differs from datasets[{i}].manifest_sha256 in the mixture manifest")
        ds_manifest = _read_manifest(ds_root, report, prefix)
        ds_manifests.append(ds_manifest)
        if ds_manifest is None:
            provenance.append(None)
            continue
        _audit_dataset(ds_root, ds_manifest, report, allow, prefix)
        for key in ("n_tokens", "n_docs"):
            agree(report, fmt.MANIFEST, f"datasets[{i}].{key}", entry.get(key), ds_manifest.get(key),
                  prefix + fmt.MANIFEST)
        try:
            prov = read_provenance(ds_root / ds_manifest["provenance"]["path"])
            offsets = {s["path"]: (j, s["token_offset"]) for j, s in enumerate(ds_manifest["shards"])}
            provenance.append((prov, offsets))
        except Exception:  # noqa: BLE001 - reported by the dataset audit above
            provenance.append(None)
    return provenance, ds_manifests


def _mixture_sequence(seq: np.ndarray, table: pa.Table, lengths: np.ndarray, manifest: dict[str, Any],
                      report: AuditReport) -> None:
    """sequence.npy's counts and running ends, and sequence.parquet row for row against it."""
    seq_path, table_path = manifest["sequence"]["array"]["path"], manifest["sequence"]["table"]["path"]
    n_tokens, n_docs = int(manifest["n_tokens"]), int(manifest["n_docs"])
    report.add(fmt.MANIFEST, "document count", len(seq) == n_docs, f"n_docs {n_docs}, {len(seq)} in {seq_path}")
    report.add(fmt.MANIFEST, "token count", int(lengths.sum()) == n_tokens,
               f"n_tokens {n_tokens}, {int(lengths.sum())} in {seq_path}")
    report.add(seq_path, "cumulative ends", np.array_equal(seq["end"].astype(np.int64), np.cumsum(lengths)),
               "end is not the running sum of length")
    report.add(table_path, "one row per sequence entry", table.num_rows == len(seq),
               f"{table.num_rows} rows, {len(seq)} entries")
    if table.num_rows == len(seq):
        same = (np.array_equal(table.column("n_tokens").to_numpy(), lengths)
                and np.array_equal(table.column("doc_index").to_numpy(), seq["doc"].astype(np.int64))
                and np.array_equal(table.column("epoch").to_numpy(), seq["epoch"].astype(np.int64)))
        report.add(table_path, f"agrees with {seq_path}", same, "documents, lengths or epochs differ")


def _mixture_documents(seq: np.ndarray, lengths: np.ndarray, provenance: list[Provenance | None],
                       entries: list[dict[str, Any]], report: AuditReport,
                       seq_path: str) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Every referenced document exists with exactly these tokens; its id, source and license per entry, as
    Arrow arrays in sequence order (null where a dataset could not be read)."""
    positions: list[np.ndarray] = []
    columns: dict[str, list[pa.Array]] = {name: [] for name in ("id", "source", "license")}
    for d, prov in enumerate(provenance):
        mask = seq["dataset"] == d
        if prov is None or not mask.any():
            continue
        table_d, offsets = prov
        docs = seq["doc"][mask].astype(np.int64)
        if docs.max() >= table_d.num_rows:
            report.add(seq_path, "references existing documents", False,
                       f"document {int(docs.max())} beyond dataset {entries[d]['path']}")
            continue
        start = table_d.column("token_start").to_numpy()[docs]
        end = table_d.column("token_end").to_numpy()[docs]
        shards = pc.dictionary_encode(table_d.column("shard").take(pa.array(docs))).combine_chunks()
        names = shards.dictionary.to_pylist()
        index = np.array([offsets[n][0] if n in offsets else -1 for n in names], np.int64)
        shift = np.array([offsets[n][1] if n in offsets else 0 for n in names], np.int64)
        codes = shards.indices.to_numpy(zero_copy_only=False)
        spans_ok = (np.array_equal(seq["shard"][mask].astype(np.int64), index[codes])
                    and np.array_equal(seq["start"][mask].astype(np.int64), start - shift[codes])
                    and np.array_equal(lengths[mask], end - start))
        report.add(seq_path, f"spans are whole documents of {entries[d]['path']}", spans_ok,
                   "shard/start/length differ from the dataset's provenance")
        positions.append(np.flatnonzero(mask))
        for name, parts in columns.items():
            parts.append(table_d.column(name).take(pa.array(docs)).combine_chunks().cast(pa.string()))
    covered = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    missing = np.setdiff1d(np.arange(len(seq)), covered)  # entries of unreadable datasets: nulls
    order = pa.array(np.argsort(np.concatenate([covered, missing]), kind="stable"))
    out = [pa.concat_arrays([*parts, pa.nulls(len(missing), pa.string())]).take(order)
           for parts in columns.values()]
    return out[0], out[1], out[2]


def _mixture_inherited(manifest: dict[str, Any], entries: list[dict[str, Any]],
                       ds_manifests: list[dict[str, Any] | None], report: AuditReport) -> None:
    """dtype, tokenizer and curation are copied from the (audited) dataset manifests."""
    manifests = [m for m in ds_manifests if m is not None]
    if not manifests or len(manifests) != len(ds_manifests):
        return
    first = manifests[0]
    where = entries[0]["path"].rstrip("/") + "/" + fmt.MANIFEST
    try:
        tokenizer = {k: first["tokenizer"][k] for k in ("sha256", "eos_id", "vocab_size")}
    except (KeyError, TypeError):
        return  # a malformed dataset manifest, failed by its own audit
    agree(report, fmt.MANIFEST, "dtype", manifest.get("dtype"), first.get("dtype"), where)
    agree(report, fmt.MANIFEST, "tokenizer", manifest.get("tokenizer"), tokenizer, where)
    others = [e["path"] for e, m in zip(entries, manifests, strict=True)
              if (m.get("tokenizer") or {}).get("sha256") != tokenizer["sha256"]
              or m.get("dtype") != first.get("dtype")]
    report.add(fmt.MANIFEST, "one tokenizer and dtype", not others,
               f"datasets {others} differ from {entries[0]['path']}")
    agree(report, fmt.MANIFEST, "curation", manifest.get("curation"), [m.get("curation") for m in manifests],
           "the datasets' manifests")


def _mixture_sources(manifest: dict[str, Any], seq: np.ndarray, sources: pa.Array, licenses: pa.Array,
                     tables: list[Any], report: AuditReport) -> None:
    """Targets from the recorded config (with `mix.targets`), realised counts from the sequence, what was
    available from the datasets' provenance: every number of `sources`, `excluded_sources`, `target_tokens`."""
    from data_pipeline.mixture.mix import MixConfig, targets

    mname = fmt.MANIFEST
    config = manifest.get("config") or {}
    try:
        cfg = MixConfig.model_validate({**config, "run": {**(config.get("run") or {}), "dir": "."}})
        goal = targets(cfg)
    except (ValueError, TypeError, ConfigError) as exc:
        report.add(mname, "config", False, f"the recorded mix config does not validate: {exc}")
        return
    agree(report, mname, "target_tokens", manifest.get("target_tokens"), cfg.target_tokens, "config.target_tokens")
    available: dict[str, list[int]] = {}
    for table in tables:
        sizes = pa.table({"source": table.column("source"),
                          "n": pa.array(table.column("token_end").to_numpy() - table.column("token_start").to_numpy())})
        for row in sizes.group_by("source").aggregate([("n", "sum"), ("n", "count")]).to_pylist():
            entry = available.setdefault(row["source"], [0, 0])
            entry[0] += row["n_sum"]
            entry[1] += row["n_count"]
    lengths = seq["length"].astype(np.int64)
    n_tokens = int(lengths.sum())
    expected: dict[str, Any] = {}
    for name, tokens in goal.items():
        mask = pc.fill_null(pc.equal(sources, name), False).to_numpy(zero_copy_only=False)
        got = int(lengths[mask].sum())
        have, have_docs = available.get(name, [0, 0])
        tally = pc.value_counts(pc.filter(licenses, pa.array(mask))).to_pylist()
        lic_counts = sorted((str(t["values"]), t["counts"]) for t in tally)
        expected[name] = {
            "target_tokens": tokens,
            "target_ratio": tokens / cfg.target_tokens,
            "tokens": got,
            "docs": int(mask.sum()),
            "ratio": got / n_tokens if n_tokens else None,
            "available_tokens": have,
            "available_docs": have_docs,
            "repetitions": got / have if have else None,
            "max_epoch": int(seq["epoch"][mask].max()) if mask.any() else None,
            "max_repetitions": cfg.sources[name].max_repetitions or cfg.max_repetitions,
            "licenses": {k: int(c) for k, c in lic_counts},
        }
    source = f"{fmt.SEQUENCE_ARRAY}, the datasets' provenance and the recorded config"
    agree(report, mname, "sources", manifest.get("sources"), expected, source)
    excluded = {name: {"tokens": t, "docs": d} for name, (t, d) in sorted(available.items()) if name not in goal}
    agree(report, mname, "excluded_sources", manifest.get("excluded_sources"), excluded, "the datasets' provenance")
