"""`atom audit RUN` on a curation run (schema atom.curation/1): every number its manifest states is recounted.

    curation manifest field         recomputed from
    outputs[i] path                 the files curated/*.parquet (each listed once, none unlisted)
    outputs[i] bytes, sha256        the file (bytes alone off, with the sha256 right: the manifest fails)
    outputs[i].documents            the file's row count
    stages[i].dropped               the reasons of excluded/<stage>/*.jsonl (the read stage: quarantine/*.jsonl)
    stages[i].documents_kept/in     backwards from the curated rows: a stage keeps what the next one takes in,
                                    and takes in what it keeps plus what it dropped; the stated values must
                                    also chain (documents_in = kept + dropped = the previous stage's kept)
    stages[i].bytes_in/out          chained (bytes_in = the previous stage's bytes_out); the last stage's
                                    bytes_out is the curated text's UTF-8 size
    quarantine                      reasons of quarantine/*.jsonl
    excluded                        the excluded/<stage>/*.jsonl files; every directory there is a stage
    sources.<name> documents, bytes curated rows and their text of that source
    sources.<name> quarantined      quarantine rows of that source
    sources.<name> skipped          reasons of quarantine/skipped/*.jsonl rows of that source
    sources.<name> records_in       curated + excluded + quarantined rows of that source
    sources.<name> license, version the rows (curated and excluded) of that source
    reports                         the layout of atom.curation/1; decontamination.json recomputed from
                                    excluded/decontaminate/, throughput.json against the stages
    config_sha256, sources.*.input  not recomputable (they hash the raw inputs and config): recorded as given

The tokenize stage's input contract (columns, types, unique ids, non-empty licenses) is checked too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.audit import AuditReport, agree
from core.config import ConfigError
from core.manifest import sha256_file, verify_file_record
from data_pipeline.curate.steps.write import decontamination_report
from data_pipeline.tokens.curated import CURATED_DIR, MANIFEST, open_curated

EXCLUDED_DIR = "excluded"
QUARANTINE_DIR = "quarantine"
SKIPPED_DIR = f"{QUARANTINE_DIR}/skipped"  # paths found under a source and not read, with their reason
READ_STAGE = "read"  # its drops are the quarantine
DECONTAM_STAGE = "decontaminate"
REPORTS = {"decontamination": "reports/decontamination.json", "throughput": "reports/throughput.json"}
REQUIRED = {"stages": list, "outputs": list, "sources": dict, "quarantine": dict, "excluded": dict, "reports": dict}

Rows = dict[str, list[dict[str, Any]]]  # file (relative to the run) -> its JSONL rows


def audit_curation(root: Path, manifest: dict[str, Any], report: AuditReport, allow: list[str] | None) -> None:
    """Every check below on the run at `root`, whose manifest.json is `manifest`."""
    if not check_required(manifest, REQUIRED, report):
        return
    curated = check_outputs(root, manifest, report)
    quarantine = read_jsonl(root, QUARANTINE_DIR, report)
    folders = sorted(d for d in (root / EXCLUDED_DIR).iterdir() if d.is_dir()) if (root / EXCLUDED_DIR).is_dir() else []
    excluded = {d.name: read_jsonl(root, f"{EXCLUDED_DIR}/{d.name}", report) for d in folders}
    check_excluded_listing(root, manifest, excluded, report)
    check_stated_chain(manifest, report)
    check_quarantine(manifest, quarantine, report)
    if curated is not None:
        report.summary.update({"documents": curated["documents"], "outputs": len(manifest["outputs"]),
                               "stages": len(manifest["stages"])})
        check_stage_counts(manifest, curated, quarantine, excluded, report)
        check_sources(manifest, curated, quarantine, excluded, read_jsonl(root, SKIPPED_DIR, report), report, allow)
    check_decontamination_report(root, manifest, excluded.get(DECONTAM_STAGE, {}), report)
    check_throughput_report(root, manifest, report)
    check_contract(root, report)


def check_required(manifest: dict[str, Any], required: Mapping[str, type], report: AuditReport) -> bool:
    """The keys a run's checks read are there with their types (else one failed check listing them)."""
    bad = [f"{key} ({kind.__name__})" for key, kind in required.items() if not isinstance(manifest.get(key), kind)]
    return report.add(MANIFEST, "required keys", not bad, f"missing or mistyped: {', '.join(bad)}")


def check_allowed_licenses(rows: list[dict[str, Any]], allow: list[str] | None, report: AuditReport) -> None:
    """Every curated row's license is in the allow-list, when there is one."""
    if allow is not None:
        outside = sorted({row["license"] for row in rows} - set(allow))
        report.add(CURATED_DIR, "licenses within allow-list", not outside, f"{', '.join(outside)} not in {allow}")


def check_outputs(root: Path, manifest: dict[str, Any], report: AuditReport) -> dict[str, Any] | None:
    """Each listed shard is on disk with its hash, size and row count, and no shard is unlisted. Returns the
    recounted rows (total, and per source: documents, text bytes, licenses, versions), None if unreadable."""
    outputs = manifest["outputs"]
    listed = [o.get("path") if isinstance(o, dict) else None for o in outputs]
    on_disk = sorted(p.relative_to(root).as_posix() for p in (root / CURATED_DIR).glob("*.parquet"))
    report.add(MANIFEST, "outputs lists every curated shard once", sorted(map(str, listed)) == on_disk,
               f"outputs lists {listed}, {CURATED_DIR}/ holds {on_disk}")
    totals: dict[str, Any] = {"documents": 0, "bytes": 0, "sources": {}}
    readable = True
    for i, record in enumerate(outputs):
        if not (isinstance(record, dict) and {"path", "bytes", "sha256", "documents"} <= record.keys()
                and isinstance(record["path"], str) and record["path"].startswith(CURATED_DIR + "/")):
            report.add(MANIFEST, f"outputs[{i}]", False, f"not a file record under {CURATED_DIR}/: {record!r}")
            readable = False
            continue
        path = root / record["path"]
        if path.is_file() and path.stat().st_size != record["bytes"] and sha256_file(path) == record["sha256"]:
            agree(report, MANIFEST, f"outputs[{i}].bytes", record["bytes"], path.stat().st_size, record["path"])
        else:
            problem = verify_file_record(record, root)
            report.add(record["path"], "sha256 and size", problem is None, problem or "")
        if not path.is_file():
            readable = False
            continue
        try:
            table = pq.read_table(path, columns=["source", "text", "license", "source_version"])
        except (pa.ArrowInvalid, OSError, KeyError) as exc:
            report.add(record["path"], "readable Parquet with columns source, text, license, source_version",
                       False, str(exc))
            readable = False
            continue
        agree(report, MANIFEST, f"outputs[{i}].documents", record["documents"], table.num_rows, record["path"])
        columns = [table.column(c).to_pylist() for c in ("source", "text", "license", "source_version")]
        for source, text, license_, version in zip(*columns, strict=True):
            entry = totals["sources"].setdefault(source, {"documents": 0, "bytes": 0, "licenses": set(),
                                                          "versions": set()})
            size = len((text or "").encode("utf-8", "surrogatepass"))
            entry["documents"] += 1
            entry["bytes"] += size
            entry["licenses"].add(license_)
            entry["versions"].add(version)
            totals["documents"] += 1
            totals["bytes"] += size
    return totals if readable else None


def read_jsonl(root: Path, folder: str, report: AuditReport) -> Rows:
    """The rows of folder/*.jsonl, by file; a line that is not a JSON object fails naming its file and line."""
    rows: Rows = {}
    for path in sorted((root / folder).glob("*.jsonl")):
        name = path.relative_to(root).as_posix()
        rows[name] = []
        problem = ""
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                row = exc
            if not isinstance(row, dict):
                problem = f"line {lineno}: {row!r}"
                break
            rows[name].append(row)
        report.add(name, "rows are JSON objects", not problem, problem)
    return rows


def check_excluded_listing(root: Path, manifest: dict[str, Any], excluded: dict[str, Rows],
                           report: AuditReport) -> None:
    """`excluded` names exactly the exclusion files; each excluded/<dir> is a stage of the run, and its
    rows say so (their `stage` field)."""
    listed = {stage: files for stage, files in excluded.items() if files}
    agree(report, MANIFEST, "excluded", manifest["excluded"], {s: sorted(f) for s, f in listed.items()},
          f"{EXCLUDED_DIR}/")
    stages = {s.get("name") for s in manifest["stages"] if isinstance(s, dict)}
    for stage, files in excluded.items():
        report.add(f"{EXCLUDED_DIR}/{stage}", "a stage of the run", stage in stages,
                   f"no stage {stage!r} in {MANIFEST} stages")
        for name, rows in files.items():
            wrong = [i for i, row in enumerate(rows, start=1) if row.get("stage") != stage]
            report.add(name, "rows name their stage", not wrong, f"line {wrong[:1]}: stage is not {stage!r}")


def check_stated_chain(manifest: dict[str, Any], report: AuditReport) -> None:
    """The stated accounting holds by itself: in = kept + dropped, and each stage takes in (documents and
    bytes) what the one before it kept."""
    previous: dict[str, Any] | None = None
    for i, stage in enumerate(manifest["stages"]):
        try:
            documents_in, kept = int(stage["documents_in"]), int(stage["documents_kept"])
            dropped = sum(int(n) for n in stage["dropped"].values())
            int(stage["bytes_in"]), int(stage["bytes_out"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            report.add(MANIFEST, f"stages[{i}]", False, f"malformed stage entry: {exc!r}")
            previous = None
            continue
        report.add(MANIFEST, f"stages[{i}].documents_in = documents_kept + dropped", documents_in == kept + dropped,
                   f"stages[{i}] ({stage.get('name')}): {documents_in} in, {kept} kept + {dropped} dropped")
        if previous is not None:
            where = f"{MANIFEST} stages[{i - 1}] ({previous.get('name')})"
            agree(report, MANIFEST, f"stages[{i}].documents_in", stage["documents_in"], previous["documents_kept"],
                  f"{where} documents_kept")
            agree(report, MANIFEST, f"stages[{i}].bytes_in", stage["bytes_in"], previous["bytes_out"],
                  f"{where} bytes_out")
        previous = stage


def reasons(rows: Rows) -> dict[str, int]:
    """How many rows give each `reason`, sorted by reason (the manifest's layout)."""
    counted: Counter[Any] = Counter(row.get("reason") for file_rows in rows.values() for row in file_rows)
    return dict(sorted(counted.items(), key=lambda kv: str(kv[0])))


def check_quarantine(manifest: dict[str, Any], quarantine: Rows, report: AuditReport) -> None:
    """`quarantine` counts the rows of quarantine/*.jsonl by reason."""
    agree(report, MANIFEST, "quarantine", manifest["quarantine"], reasons(quarantine), f"{QUARANTINE_DIR}/*.jsonl")


def check_stage_counts(manifest: dict[str, Any], curated: dict[str, Any], quarantine: Rows,
                       excluded: dict[str, Rows], report: AuditReport) -> None:
    """From the last stage back: a stage keeps what the next one took in (the last: the curated rows) and
    takes in that plus the rows of its exclusion (read: quarantine) files."""
    stages = manifest["stages"]
    kept, kept_from = curated["documents"], f"{CURATED_DIR}/*.parquet"
    for i in range(len(stages) - 1, -1, -1):
        stage = stages[i]
        if not isinstance(stage, dict):
            return
        name = str(stage.get("name"))
        rows, folder = (quarantine, QUARANTINE_DIR) if name == READ_STAGE else (excluded.get(name, {}),
                                                                              f"{EXCLUDED_DIR}/{name}")
        dropped = reasons(rows)
        agree(report, MANIFEST, f"stages[{i}].dropped", stage.get("dropped"), dropped, f"{folder}/*.jsonl")
        agree(report, MANIFEST, f"stages[{i}].documents_kept", stage.get("documents_kept"), kept, kept_from)
        kept += sum(dropped.values())
        kept_from = f"{kept_from} and {folder}/*.jsonl"
        agree(report, MANIFEST, f"stages[{i}].documents_in", stage.get("documents_in"), kept, kept_from)
    if stages and isinstance(stages[-1], dict):
        agree(report, MANIFEST, f"stages[{len(stages) - 1}].bytes_out", stages[-1].get("bytes_out"),
              curated["bytes"], f"the UTF-8 text of {CURATED_DIR}/*.parquet")


def check_sources(manifest: dict[str, Any], curated: dict[str, Any], quarantine: Rows, excluded: dict[str, Rows],
                  skipped: Rows, report: AuditReport, allow: list[str] | None) -> None:
    """Each source's counts from the rows of that source (paths not read: quarantine/skipped/); every
    curated source listed; licenses allowed."""
    stated = manifest["sources"]
    found = curated["sources"]
    unlisted = sorted(set(found) - set(stated), key=str)
    report.add(MANIFEST, "sources lists every curated source", not unlisted,
               f"{CURATED_DIR}/*.parquet holds sources {unlisted} not in sources")
    dropped: dict[Any, dict[str, Any]] = {}  # source (None when a row names none) -> counts
    for rows in excluded.values():
        for row in (r for file_rows in rows.values() for r in file_rows):
            meta: dict[str, Any] = row["metadata"] if isinstance(row.get("metadata"), dict) else {}
            entry = dropped.setdefault(meta.get("source"), {"n": 0, "licenses": set(), "versions": set()})
            entry["n"] += 1
            entry["licenses"].add(meta.get("license"))
            entry["versions"].add(meta.get("source_version"))
    held = Counter(row.get("source") for file_rows in quarantine.values() for row in file_rows)
    not_read: dict[Any, Counter] = {}
    for row in (r for file_rows in skipped.values() for r in file_rows):
        not_read.setdefault(row.get("source"), Counter())[row.get("reason")] += 1
    where = f"{CURATED_DIR}/*.parquet, {EXCLUDED_DIR}/ and {QUARANTINE_DIR}/"
    for name, entry in stated.items():
        if not isinstance(entry, dict):
            report.add(MANIFEST, f"sources.{name}", False, f"not an object: {entry!r}")
            continue
        kept = found.get(name, {"documents": 0, "bytes": 0, "licenses": set(), "versions": set()})
        gone = dropped.get(name, {"n": 0, "licenses": set(), "versions": set()})
        agree(report, MANIFEST, f"sources.{name}.documents", entry.get("documents"), kept["documents"],
              f"{CURATED_DIR}/*.parquet")
        agree(report, MANIFEST, f"sources.{name}.bytes", entry.get("bytes"), kept["bytes"], f"{CURATED_DIR}/*.parquet")
        agree(report, MANIFEST, f"sources.{name}.quarantined", entry.get("quarantined"), held[name],
              f"{QUARANTINE_DIR}/*.jsonl")
        agree(report, MANIFEST, f"sources.{name}.skipped", entry.get("skipped", {}),
              dict(sorted(not_read.get(name, Counter()).items())), f"{SKIPPED_DIR}/*.jsonl")
        agree(report, MANIFEST, f"sources.{name}.records_in", entry.get("records_in"),
              kept["documents"] + gone["n"] + held[name], where)
        for key, values in (("license", kept["licenses"] | gone["licenses"]),
                            ("version", kept["versions"] | gone["versions"])):
            if values:  # a source whose every record was quarantined has no row naming them
                actual = next(iter(values)) if len(values) == 1 else sorted(values, key=str)
                agree(report, MANIFEST, f"sources.{name}.{key}", entry.get(key), actual, where)
    licenses = {lic for entry in found.values() for lic in entry["licenses"]}
    report.summary["licenses"] = ",".join(sorted(map(str, licenses)))
    if allow is not None:
        outside = sorted(map(str, licenses - set(allow)))
        report.add(f"{CURATED_DIR}/*.parquet", "licenses within allow-list", not outside,
                   f"{', '.join(outside)} not in allow-list {allow}")


def read_report(root: Path, manifest: dict[str, Any], key: str, report: AuditReport) -> Any:
    """The report `reports.<key>` names, at the path atom.curation/1 gives it; None (a failed check) if absent."""
    name = REPORTS[key]
    agree(report, MANIFEST, f"reports.{key}", manifest["reports"].get(key), name, "the layout of atom.curation/1")
    file = root / name
    if not report.add(name, "present", file.is_file(), "missing"):
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.add(name, "readable JSON", False, str(exc))
        return None


def check_decontamination_report(root: Path, manifest: dict[str, Any], rows: Rows, report: AuditReport) -> None:
    """reports/decontamination.json lists exactly the documents excluded/decontaminate/ holds."""
    stated = read_report(root, manifest, "decontamination", report)
    if stated is None or not report.add(REPORTS["decontamination"], "a JSON object", isinstance(stated, dict),
                                        f"{type(stated).__name__}, not an object"):
        return
    matches = []
    for row in (r for file_rows in rows.values() for r in file_rows):
        meta: dict[str, Any] = row["metadata"] if isinstance(row.get("metadata"), dict) else {}
        matches.append({"id": row.get("id"), "source": meta.get("source"), "url": meta.get("url"),
                        "eval_file": row.get("eval_file"), "eval_id": row.get("eval_id"), "ngram": row.get("ngram")})
    expected = decontamination_report(matches)
    for key in ("documents_removed", "matches", "by_eval_set"):
        agree(report, REPORTS["decontamination"], key, stated.get(key), expected[key],
              f"{EXCLUDED_DIR}/{DECONTAM_STAGE}/*.jsonl")


def check_throughput_report(root: Path, manifest: dict[str, Any], report: AuditReport) -> None:
    """reports/throughput.json has one entry per stage, with its documents_in; the rate is in / cpu_seconds."""
    stated = read_report(root, manifest, "throughput", report)
    if stated is None:
        return
    entries: Any = stated.get("stages") if isinstance(stated, dict) else None
    if not report.add(REPORTS["throughput"], "stages", isinstance(entries, list) and all(
            isinstance(e, dict) and isinstance(e.get("cpu_seconds"), int | float) for e in entries),
            "no list of stage entries with cpu_seconds"):
        return
    expected = [{"name": s.get("name"), "documents_in": s.get("documents_in"), "cpu_seconds": e["cpu_seconds"],
                 "docs_per_cpu_second": round(s.get("documents_in") / e["cpu_seconds"], 1)
                 if e["cpu_seconds"] and isinstance(s.get("documents_in"), int) else None}
                for s, e in zip(manifest["stages"], entries, strict=False) if isinstance(s, dict)]
    if len(entries) != len(expected):
        report.add(REPORTS["throughput"], "stages", False,
                   f"{len(entries)} entries, {MANIFEST} has {len(manifest['stages'])} stages")
        return
    agree(report, REPORTS["throughput"], "stages", entries, expected, f"{MANIFEST} stages")


def check_contract(root: Path, report: AuditReport) -> None:
    """The curated shards meet the tokenize stage's input contract (what `atom tokenize` would refuse)."""
    try:
        open_curated(root, verify_outputs=False)  # outputs were verified above, each failure on its file
    except ConfigError as exc:
        report.add(CURATED_DIR, "the tokenize input contract", False, str(exc))
        return
    report.add(CURATED_DIR, "the tokenize input contract", True)
