"""The default pipeline on the bundled real sample: what it removes, masks and records."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq

from core.manifest import verify_file_record
from data_pipeline.curate.steps.decontam import BUILTIN_EVALS
from data_pipeline.curate.steps.read import document_id
from data_pipeline.curate.steps.write import COLUMNS, MANIFEST_SCHEMA
from tests.data_pipeline.curate_helpers import REPO_ROOT, read_excluded, read_manifest

PLANTED = "planted://"


def curated_rows(run_dir):
    files = sorted((run_dir / "curated").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_output_contract(sample_run):
    manifest = read_manifest(sample_run)
    assert manifest["schema"] == MANIFEST_SCHEMA
    assert set(manifest) >= {"schema", "sources", "stages", "quarantine", "outputs", "config_sha256"}
    assert [o["path"] for o in manifest["outputs"]] == sorted(o["path"] for o in manifest["outputs"])
    for record in manifest["outputs"]:
        assert record["path"].startswith("curated/") and record["path"].endswith(".parquet")
        assert verify_file_record(record, sample_run) is None
        table = pq.read_table(sample_run / record["path"])
        assert tuple(table.column_names) == COLUMNS
        assert all(str(t) == "string" for t in table.schema.types)
        assert table.num_rows == record["documents"]
    rows = curated_rows(sample_run)
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["source"] for r in rows} >= {"libreoffice-help-en-us", "libreoffice-help-de", "libreoffice-help-fr"}
    assert {r["language"] for r in rows} == {"en", "de", "fr"}
    licenses = {r["source"]: r["license"] for r in rows}
    assert licenses["libreoffice-help-de"] == "MPL-2.0" and licenses.get("python3.11-doc", "PSF-2.0") == "PSF-2.0"
    for entry in manifest["sources"].values():
        assert set(entry) >= {"license", "version", "documents", "bytes"}
    assert sum(e["documents"] for e in manifest["sources"].values()) == len(rows)


def test_every_document_accounted_for(sample_run):
    stages = read_manifest(sample_run)["stages"]
    assert [s["name"] for s in stages] == [
        "read", "extract", "pii", "language", "url_filter", "gopher_repetition", "gopher_quality", "c4",
        "fineweb_quality", "exact_dedup", "minhash_dedup", "decontaminate"]
    for stage in stages:
        assert stage["documents_in"] == stage["documents_kept"] + sum(stage["dropped"].values()), stage
        excluded = read_excluded(sample_run, stage["name"])
        if stage["name"] != "read":  # read drops are the quarantine
            assert len(excluded) == sum(stage["dropped"].values()), stage["name"]
            assert all(e["reason"] in stage["dropped"] for e in excluded)
    for before, after in zip(stages, stages[1:], strict=False):
        assert after["documents_in"] == before["documents_kept"]
        assert after["bytes_in"] == before["bytes_out"]
    assert stages[-1]["documents_kept"] == len(curated_rows(sample_run))
    assert stages[0]["documents_in"] == 60 * 3 + 10 + 5  # every file and planted row of the sample


def test_planted_duplicates_removed(sample_run):
    urls = {r["url"] for r in curated_rows(sample_run)}
    assert "planted://tutorial/appetite" in urls  # the original stays
    assert "planted://exact-copy/appetite" not in urls and "planted://near-copy/appetite" not in urls
    exact = {e["metadata"]["url"]: e["reason"] for e in read_excluded(sample_run, "exact_dedup")}
    near = {e["metadata"]["url"]: e["reason"] for e in read_excluded(sample_run, "minhash_dedup")}
    assert exact["planted://exact-copy/appetite"] == "exact_duplicate"
    assert near["planted://near-copy/appetite"] == "near_duplicate"


def test_humaneval_prompt_caught(sample_run):
    report = json.loads((sample_run / "reports" / "decontamination.json").read_text())
    with gzip.open(BUILTIN_EVALS / "HumanEval.jsonl.gz", "rt") as fh:
        task_id = json.loads(fh.readlines()[2])["task_id"]
    matches = {m["url"]: m for m in report["matches"]}
    assert matches["planted://humaneval/faq-windows"]["eval_id"] == task_id
    assert matches["planted://humaneval/faq-windows"]["eval_file"] == "HumanEval.jsonl.gz"
    assert not any(r["url"].startswith("planted://humaneval") for r in curated_rows(sample_run))
    decontam = read_manifest(sample_run)["stages"][-1]
    assert decontam["dropped"] == {"contaminated": report["documents_removed"]}


def test_pii_masked(sample_run):
    (row,) = [r for r in curated_rows(sample_run) if r["url"] == "planted://pii/whatnow"]
    assert "jane.doe@example.com" not in row["text"] and "docs-team@python.org" not in row["text"]
    assert "93.184.216.34" not in row["text"]
    assert "email@example.com" in row["text"]
    pii = next(s for s in read_manifest(sample_run)["stages"] if s["name"] == "pii")
    assert pii["documents_modified"] >= 1


def test_ids_are_content_derived(sample_run):
    rows = {r["url"]: r for r in curated_rows(sample_run)}
    first = (REPO_ROOT / "data_pipeline/sample_corpus/planted/planted.jsonl").read_text().splitlines()[0]
    text = json.loads(first)["text"]
    expected = document_id("planted", "planted://tutorial/appetite", text.encode())
    assert rows["planted://tutorial/appetite"]["id"] == expected
