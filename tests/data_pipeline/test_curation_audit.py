"""`atom audit RUN` on a curation run: a fresh run passes, and each tampering fails naming its field and file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from core.audit import AuditReport
from data_pipeline.audit import audit_data
from tests.data_pipeline.curate_helpers import REPO_ROOT, read_manifest


def copy_run(sample_run: Path, tmp_path: Path) -> Path:
    """A copy to tamper with (the session's sample run is shared and read-only)."""
    return Path(shutil.copytree(sample_run, tmp_path / "run"))


def failures(report: AuditReport) -> list[tuple[str, str, str]]:
    return [(c.file, c.check, c.detail) for c in report.failures]


def write_manifest(run: Path, manifest: dict) -> None:
    (run / "manifest.json").write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")


def test_fresh_curation_run_passes_the_cli_audit(sample_run):
    done = subprocess.run([sys.executable, "-m", "atom", "audit", str(sample_run)], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "curation run" in done.stdout and "0 failed: PASS" in done.stdout
    stages = read_manifest(sample_run)["stages"]
    assert audit_data(sample_run).summary["documents"] == stages[-1]["documents_kept"] > 0


def test_curated_shard_truncated_to_one_row_fails_naming_the_file(sample_run, tmp_path):
    run = copy_run(sample_run, tmp_path)
    shard = run / "curated" / "00000.parquet"
    table = pq.read_table(shard)
    assert table.num_rows > 1
    pq.write_table(table.slice(0, 1), shard)
    report = audit_data(run)
    assert not report.ok
    found = failures(report)
    assert any(f == "curated/00000.parquet" and check == "sha256 and size" for f, check, _ in found), found
    assert any(f == "manifest.json" and check == "outputs[0].documents" and "curated/00000.parquet" in detail
               and "gives 1" in detail for f, check, detail in found), found


def test_edited_documents_kept_fails_naming_the_field(sample_run, tmp_path):
    run = copy_run(sample_run, tmp_path)
    manifest = read_manifest(run)
    index = next(i for i, s in enumerate(manifest["stages"]) if s["name"] == "language")
    manifest["stages"][index]["documents_kept"] += 1
    write_manifest(run, manifest)
    report = audit_data(run)
    assert not report.ok
    named = {(f, check) for f, check, _ in failures(report)}
    assert ("manifest.json", f"stages[{index}].documents_kept") in named, named
    assert ("manifest.json", f"stages[{index}].documents_in = documents_kept + dropped") in named, named
    assert ("manifest.json", f"stages[{index + 1}].documents_in") in named, named  # the chain breaks


def test_deleted_exclusion_row_fails(sample_run, tmp_path):
    run = copy_run(sample_run, tmp_path)
    manifest = read_manifest(run)
    file = run / manifest["excluded"]["gopher_quality"][0]
    lines = file.read_text(encoding="utf-8").splitlines()
    file.write_text("\n".join(lines[1:]) + ("\n" if lines[1:] else ""), encoding="utf-8")
    index = next(i for i, s in enumerate(manifest["stages"]) if s["name"] == "gopher_quality")
    report = audit_data(run)
    assert not report.ok
    found = failures(report)
    assert any(f == "manifest.json" and check == f"stages[{index}].dropped" and "excluded/gopher_quality" in detail
               for f, check, detail in found), found


def test_missing_decontamination_report_fails(sample_run, tmp_path):
    run = copy_run(sample_run, tmp_path)
    (run / "reports" / "decontamination.json").unlink()
    report = audit_data(run)
    assert not report.ok
    assert ("reports/decontamination.json", "present", "missing") in failures(report)


def test_quarantine_row_the_counts_do_not_hold_fails(sample_run, tmp_path):
    run = copy_run(sample_run, tmp_path)
    assert read_manifest(run)["quarantine"] == {}  # the sample quarantines nothing
    row = {"source": "planted", "location": "planted:docs.jsonl:3", "reason": "malformed_json", "detail": "",
           "preview": '{"text": "cut off'}
    (run / "quarantine").mkdir(exist_ok=True)
    (run / "quarantine" / "00000.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    found = failures(audit_data(run))
    named = {(f, check) for f, check, _ in found}
    assert {("manifest.json", "quarantine"), ("manifest.json", "stages[0].dropped"),
            ("manifest.json", "sources.planted.quarantined")} <= named, found
    assert any(check == "quarantine" and "quarantine.malformed_json: manifest.json states (absent), "
               "quarantine/*.jsonl gives 1" in detail for _, check, detail in found), found
