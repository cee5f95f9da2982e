"""No curation output holds an email that PII masking removes from the curated data, wherever the
document ends (kept, dropped by a filter or by dedup, quarantined, dropped at extraction); and the
datatrove stats and logs of the run name every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import RunConfig
from data_pipeline.curate import CurateConfig
from data_pipeline.curate.pipeline import run
from tests.data_pipeline.curate_helpers import REPO_ROOT, read_excluded, read_manifest

PLANTED = REPO_ROOT / "data_pipeline/sample_corpus/planted/planted.jsonl"
MASK = "email@example.com"
EMAILS = {
    "kept": "kept.author@example.net",  # in a page that is kept (and in its exact copy, dropped by dedup)
    "filtered": "dropped.person@example.net",  # in a short repetitive note dropped by a quality filter
    "quarantined": "quarantined.person@example.net",  # in a malformed JSON line
    "no_text": "extraction.person@example.net",  # in an HTML page with nothing to extract
}


def write_corpus(root: Path) -> None:
    page = json.loads(PLANTED.read_text(encoding="utf-8").splitlines()[0])["text"]
    kept = f"{page}\n\nQuestions about this tutorial go to {EMAILS['kept']}."
    note = f"Write to {EMAILS['filtered']} today. Write to {EMAILS['filtered']} today."
    (root / "html").mkdir(parents=True)
    with open(root / "docs.jsonl", "w", encoding="utf-8") as fh:
        for url, text in (("t://kept", kept), ("t://note", note), ("t://copy", kept)):
            fh.write(json.dumps({"url": url, "text": text}) + "\n")
        fh.write(f'{{"text": "cut off in the middle; reach {EMAILS["quarantined"]}\n')
    (root / "html" / "empty.html").write_text(
        f"<html><body><script>var a = 1;</script><!-- {EMAILS['no_text']} --></body></html>", encoding="utf-8")


@pytest.fixture(scope="module")
def private_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("privacy")
    write_corpus(base / "input")
    config = CurateConfig(
        run=RunConfig(dir=str(base / "run")),
        sources=[{"name": "docs", "kind": "jsonl", "path": str(base / "input" / "docs.jsonl"), "license": "PSF-2.0"},
                 {"name": "pages", "kind": "files", "path": str(base / "input" / "html"), "license": "PSF-2.0"}],
        executor={"tasks": 1, "workers": 1},
        stages={"language": {"languages": ["en"]}, "url_filter": {"enabled": False},
                "minhash": {"num_buckets": 2, "hashes_per_bucket": 4}},
    )
    run(config)
    return base / "run"


def test_no_output_holds_an_email_that_masking_removes(private_run):
    files = [p for p in sorted(private_run.rglob("*")) if p.is_file()]
    for path in files:  # curated data, exclusions, quarantine, work files, logs, stats, reports
        data = path.read_bytes()
        leaked = [e for e in EMAILS.values() if e.encode() in data]
        assert not leaked, f"{path.relative_to(private_run)} holds {leaked}"
    # each document went where the test means it to go, masked
    manifest = read_manifest(private_run)
    assert manifest["quarantine"] == {"malformed_json": 1}
    (quarantined,) = [json.loads(line) for f in (private_run / "quarantine").glob("*.jsonl")
                      for line in f.read_text(encoding="utf-8").splitlines()]
    assert f"reach {MASK}" in quarantined["preview"]
    (no_text,) = read_excluded(private_run, "extract")
    assert no_text["reason"] == "no_text_extracted" and "text" not in no_text
    filters = ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb_quality")
    (note,) = [e for stage in filters for e in read_excluded(private_run, stage) if e["metadata"]["url"] == "t://note"]
    assert f"Write to {MASK} today" in note["text"]
    (copy,) = read_excluded(private_run, "exact_dedup")
    assert copy["metadata"]["url"] == "t://copy" and f"go to {MASK}." in copy["text"]
    assert [o["documents"] for o in manifest["outputs"]] == [1]


def test_stats_and_logs_name_every_step(private_run):
    stages = [s["name"] for s in read_manifest(private_run)["stages"]]
    logs = private_run / "work" / "logs"
    names = [step["name"] for stats in sorted(logs.glob("*/stats.json"))
             for step in json.loads(stats.read_text(encoding="utf-8"))]
    assert not [n for n in names if n.endswith(": None")], names
    assert len(set(names)) == len(names), names  # no two steps share a heading
    for stage in stages[1:]:  # read's step is the source reader
        assert any(n == f"🧮 - ATOM: {stage}" or n.startswith(f"🧮 - ATOM: {stage} (") for n in names), stage
    assert "📖 - READER: atom sources" in names
    task_logs = "".join(p.read_text(encoding="utf-8") for p in sorted(logs.glob("*/logs/task_*.log")))
    assert not [line for line in task_logs.splitlines() if line.endswith(": None")]
    for name in names:
        assert name in task_logs, name
