"""`atom audit RUN` on an `atom synth` run (schema atom.curation/1, kind synthetic): its numbers recounted.

    manifest field                  recomputed from
    outputs[i] path, bytes, sha256, the curated shards (as for a curation run), and the tokenize input
    documents                       contract
    records bytes, sha256, rows     synthetic_records.parquet
    records.by_kind                 its rows: attempted, accepted, rejected, kept per kind
    quarantine                      rows whose drop_reason is malformed_output, and quarantine/malformed.jsonl
    sources.<name> documents,       the curated rows of that source (bytes: UTF-8 size of the text), and
    bytes, licenses, generators     the generator of the kept record each row came from (by document id)
    stages: generate                distinct problems among the trace records, and their prompts' bytes
    stages: sample, verify, select  the trace records by drop reason; prompt and response bytes
    stages: dedup                   documents in = what the sample-side stages kept; kept, bytes_out = the
                                    curated rows; its drops = the records dropped as duplicates
    stages[*].dropped, together     each record is dropped at most once: the reasons add up to the records'
    stages: rephrase bytes_in/out,  not recomputable (the passages and rejected rephrasings are not stored):
    dedup bytes_in, config_sha256   recorded as given
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from core.audit import AuditReport, agree
from core.manifest import verify_file_record
from data_pipeline.curate.audit import (
    check_allowed_licenses,
    check_contract,
    check_outputs,
    check_required,
    check_stated_chain,
)
from data_pipeline.synthetic.records import DROP_DUPLICATE, DROP_EXTRA, DROP_MALFORMED, DROP_WRONG
from data_pipeline.synthetic.stage import MANIFEST, QUARANTINE_DIR, RECORDS_FILE
from data_pipeline.tokens.curated import CURATED_DIR

TRACE_STAGES = ("sample", "verify", "select")  # in order, each takes in what the one before kept


def audit_synthetic(root: Path, manifest: dict[str, Any], report: AuditReport, allow: list[str] | None) -> None:
    """Every check in the module docstring on the synth run at `root`."""
    required = {"stages": list, "outputs": list, "sources": dict, "quarantine": dict, "records": dict}
    if not check_required(manifest, required, report):
        return
    curated = check_outputs(root, manifest, report)
    check_stated_chain_within(manifest, report)
    check_contract(root, report)
    records = _records(root, manifest, report)
    if records is None or curated is None:
        return
    rows = pq.read_table(root / CURATED_DIR, columns=["id", "text", "source", "license"]).to_pylist()
    report.summary.update({"documents": len(rows), "records": len(records), "outputs": len(manifest["outputs"])})
    _check_by_kind(manifest, records, report)
    _check_quarantine(root, manifest, records, report)
    _check_sources(manifest, records, rows, report, allow)
    _check_stages(manifest, records, rows, report)


def check_stated_chain_within(manifest: dict[str, Any], report: AuditReport) -> None:
    """in = kept + dropped for every stage; the chain holds between stages that count the same units (the
    trace stages count responses; generate counts problems, dedup documents), so it is checked there."""
    stages = manifest["stages"]
    chained = [s for s in stages if isinstance(s, dict) and s.get("name") in TRACE_STAGES]
    check_stated_chain({"stages": chained}, report)
    others = [s for s in stages if not (isinstance(s, dict) and s.get("name") in TRACE_STAGES)]
    for stage in others:
        check_stated_chain({"stages": [stage]}, report)


def _records(root: Path, manifest: dict[str, Any], report: AuditReport) -> list[dict[str, Any]] | None:
    record = manifest["records"]
    problem = verify_file_record(record, root) if isinstance(record.get("path"), str) else "no path"
    if not report.add(RECORDS_FILE, "sha256 and size", problem is None, problem or ""):
        return None
    rows = pq.read_table(root / RECORDS_FILE).to_pylist()
    agree(report, MANIFEST, "records.rows", record.get("rows"), len(rows), RECORDS_FILE)
    return rows


def _check_by_kind(manifest: dict[str, Any], records: list[dict[str, Any]], report: AuditReport) -> None:
    by_kind: dict[str, dict[str, int]] = {}
    for r in records:
        k = by_kind.setdefault(r["kind"], {"attempted": 0, "accepted": 0, "rejected": 0, "kept": 0})
        k["attempted"] += 1
        k["accepted" if r["accepted"] else "rejected"] += 1
        k["kept"] += bool(r["kept"])
    agree(report, MANIFEST, "records.by_kind", manifest["records"].get("by_kind"), dict(sorted(by_kind.items())),
          RECORDS_FILE)


def _check_quarantine(root: Path, manifest: dict[str, Any], records: list[dict[str, Any]],
                      report: AuditReport) -> None:
    malformed = sum(r["drop_reason"] == DROP_MALFORMED for r in records)
    agree(report, MANIFEST, "quarantine", manifest["quarantine"], {DROP_MALFORMED: malformed}, RECORDS_FILE)
    file = root / QUARANTINE_DIR / "malformed.jsonl"
    lines = file.read_text(encoding="utf-8").splitlines() if file.is_file() else []
    ids = sorted(json.loads(line)["record_id"] for line in lines if line)
    expected = sorted(r["record_id"] for r in records if r["drop_reason"] == DROP_MALFORMED)
    report.add(f"{QUARANTINE_DIR}/malformed.jsonl", "holds every malformed record", ids == expected,
               f"{len(ids)} quarantined, {len(expected)} records malformed in {RECORDS_FILE}")


def _check_sources(manifest: dict[str, Any], records: list[dict[str, Any]], rows: list[dict[str, Any]],
                   report: AuditReport, allow: list[str] | None) -> None:
    generator_of = {r["doc_id"]: f"{r['generator']}@{r['generator_version']}" for r in records if r["kept"]}
    report.add(RECORDS_FILE, "kept records are the curated documents",
               sorted(generator_of) == sorted(row["id"] for row in rows),
               f"{len(generator_of)} kept records, {len(rows)} curated rows")
    sources: dict[str, dict[str, Any]] = {}
    for row in rows:
        s = sources.setdefault(row["source"], {"documents": 0, "bytes": 0, "licenses": Counter(),
                                               "generators": Counter()})
        s["documents"] += 1
        s["bytes"] += len(row["text"].encode())
        s["licenses"][row["license"]] += 1
        s["generators"][generator_of.get(row["id"], "unknown")] += 1
    recounted = {name: {**s, "licenses": dict(sorted(s["licenses"].items())),
                        "generators": dict(sorted(s["generators"].items()))} for name, s in sorted(sources.items())}
    agree(report, MANIFEST, "sources", manifest["sources"], recounted, f"{CURATED_DIR}/ and {RECORDS_FILE}")
    check_allowed_licenses(rows, allow, report)


def _nbytes(texts: Any) -> int:
    return sum(len(t.encode()) for t in texts if t is not None)


def _trace_stages(records: list[dict[str, Any]], sampled: bool) -> dict[str, dict[str, Any]]:
    """What the trace stages' entries must say, recomputed from the trace records."""
    traces = [r for r in records if r["kind"] == "trace"]
    problems = {(r["template"], r["seed"]): r["prompt"] for r in traces}
    out: dict[str, dict[str, Any]] = {"generate": {"documents_kept": len(problems),
                                                    "bytes_out": _nbytes(problems.values())}}
    if not sampled:
        size = _nbytes(r["response"] for r in traces)
        out["verify"] = {"documents_in": len(traces), "documents_kept": len(traces), "dropped": {},
                         "bytes_in": size, "bytes_out": size}
        return out
    formed = [r for r in traces if r["drop_reason"] != DROP_MALFORMED]
    correct = [r for r in formed if r["drop_reason"] != DROP_WRONG]
    selected = [r for r in correct if r["drop_reason"] != DROP_EXTRA]
    for name, before, after, reason, size_in in (
            ("sample", traces, formed, DROP_MALFORMED, _nbytes(r["prompt"] for r in traces)),
            ("verify", formed, correct, DROP_WRONG, _nbytes(r["response"] for r in formed)),
            ("select", correct, selected, DROP_EXTRA, _nbytes(r["response"] for r in correct))):
        dropped = len(before) - len(after)
        out[name] = {"documents_in": len(before), "documents_kept": len(after),
                     "dropped": {reason: dropped} if dropped else {}, "bytes_in": size_in,
                     "bytes_out": _nbytes(r["response"] for r in after)}
    return out


def _check_stages(manifest: dict[str, Any], records: list[dict[str, Any]], rows: list[dict[str, Any]],
                  report: AuditReport) -> None:
    stages = {s.get("name"): s for s in manifest["stages"] if isinstance(s, dict)}
    expected = _trace_stages(records, "sample" in stages) if "generate" in stages else {}
    if "rephrase" in stages:
        rephrase = [r for r in records if r["kind"] == "rephrase"]
        accepted = sum(bool(r["accepted"]) for r in rephrase)
        expected["rephrase"] = {"documents_in": len(rephrase), "documents_kept": accepted}
    last_trace = "select" if "select" in expected else "verify"  # the trace stage that hands on to dedup
    into_dedup = sum(expected[n]["documents_kept"] for n in (last_trace, "rephrase") if n in expected)
    duplicates = sum(r["drop_reason"] == DROP_DUPLICATE for r in records)
    expected["dedup"] = {"documents_in": into_dedup, "documents_kept": len(rows),
                         "dropped": {DROP_DUPLICATE: duplicates} if duplicates else {},
                         "bytes_out": _nbytes(row["text"] for row in rows)}
    for name, fields in expected.items():
        if not report.add(MANIFEST, f"stage {name}", name in stages, f"no stage {name!r} in stages"):
            continue
        for field, value in fields.items():
            agree(report, MANIFEST, f"stages.{name}.{field}", stages[name].get(field), value, RECORDS_FILE)
    stated: Counter[str] = Counter()
    for stage in stages.values():
        stated.update({k: int(v) for k, v in (stage.get("dropped") or {}).items()})
    actual = Counter(r["drop_reason"] for r in records if r["drop_reason"] is not None)
    agree(report, MANIFEST, "stages[*].dropped (all stages)", dict(sorted(stated.items())),
          dict(sorted(actual.items())), RECORDS_FILE)
