"""Curation decontaminates against the field's benchmarks by default: a planted GSM8K test question and a
planted MMLU test item are removed and reported per eval set; the rest of the corpus is kept."""

from __future__ import annotations

import json

from core.config import load_config
from data_pipeline.audit import audit_data
from data_pipeline.curate import CurateConfig
from data_pipeline.curate.pipeline import run
from evaluation.catalog import get_task
from evaluation.instances import task_items
from tests.data_pipeline.curate_helpers import REPO_ROOT, read_manifest

LO_EN = REPO_ROOT / "data_pipeline/sample_corpus/libreoffice-help-en-us/files"
STAGES_OFF = "\n".join(f"  {s}: {{enabled: false}}" for s in (
    "language", "url_filter", "gopher_repetition", "gopher_quality", "c4", "fineweb_quality", "exact_dedup",
    "minhash", "pii"))


def planted_corpus(path, pages: int = 6):
    gsm8k = task_items(get_task("gsm8k:cot_8shot"), [])[3]
    mmlu = task_items(get_task("mmlu:rc_0shot"), [])[5000]
    docs = [
        {"id": "forum-gsm8k", "url": "https://forum.example/homework/42",
         "text": f"Homework help thread. Can anyone solve this?\n\n{gsm8k.text}\n\nThanks in advance!"},
        {"id": "quiz-mmlu", "url": "https://quiz.example/practice/7",
         "text": f"Practice quiz, question 7.\n{mmlu.text}\nCorrect answer: {mmlu.choice_texts[mmlu.gold]}.\n"
                 "Explanations follow in the next lesson."},
    ]
    for page in sorted(LO_EN.rglob("*.html"))[:pages]:
        docs.append({"id": page.stem, "url": f"https://help.example/{page.name}",
                     "text": page.read_text(encoding="utf-8", errors="replace")})
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return gsm8k, mmlu


def test_benchmark_items_are_removed_and_reported_per_eval_set(tmp_path):
    corpus = tmp_path / "web.jsonl"
    gsm8k, mmlu = planted_corpus(corpus)
    config = tmp_path / "c.yaml"
    config.write_text(f"sources:\n  - {{name: web, kind: jsonl, path: {corpus}, license: CC-BY-4.0}}\n"
                      f"executor: {{tasks: 1, workers: 1}}\nstages:\n{STAGES_OFF}\nrun: {{dir: {tmp_path / 'run'}}}\n")
    run(load_config(CurateConfig, config))
    manifest = read_manifest(tmp_path / "run")
    decontam = next(s for s in manifest["stages"] if s["name"] == "decontaminate")
    assert decontam["documents_in"] == 8 and decontam["dropped"] == {"contaminated": 2}
    report = json.loads((tmp_path / "run/reports/decontamination.json").read_text())
    url = {m["id"]: m["url"] for m in report["matches"]}
    assert {name: ([url[d] for d in e["documents"]], e["instances"]) for name, e in report["by_eval_set"].items()} \
        == {"GSM8K": (["https://forum.example/homework/42"], [gsm8k.id]),
            "MMLU": (["https://quiz.example/practice/7"], [mmlu.id])}
    assert audit_data(tmp_path / "run").ok

