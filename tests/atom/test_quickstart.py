"""The quickstart end to end, shortened: every stage on the bundled corpus, ending in a passing audit,
and the same release bytes when run again from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest

from atom.quickstart import DEFAULT_CONFIG, QuickstartConfig, StageStep
from atom.quickstart import run as quickstart
from core.config import load_config
from release.audit import audit_release

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SHORTER = {
    "pretrain": ["trainer.max_steps=12", "trainer.eval_every=6", "checkpoint.interval=6", "metrics.log_every=6",
                 "downstream.every=6"],
    "midtrain": ["trainer.max_steps=4", "checkpoint.interval=2", "metrics.log_every=2",
                 "evals.reasoning_problems=2", "evals.max_new_tokens=8", "evals.passkey_trials=1",
                 "downstream.every=2"],
    "eval": ["tasks=[{name: 'arc_easy:rc_0shot', limit: 6}, {name: 'gsm8k:cot_8shot', limit: 1, max_new_tokens: 4}]"],
}


def shortened() -> QuickstartConfig:
    cfg = load_config(QuickstartConfig, DEFAULT_CONFIG)
    for step in cfg.steps:
        if isinstance(step, StageStep):
            step.overrides = SHORTER.get(step.stage, [])
    cfg.samples = ["LibreOffice"]
    return cfg


def run_in(directory: Path, monkeypatch) -> Path:
    directory.mkdir()
    (directory / "data_pipeline").symlink_to(REPO / "data_pipeline")  # the sample corpus, as from the repo root
    monkeypatch.chdir(directory)
    quickstart(shortened())
    return directory / "runs" / "quickstart" / "release"


def test_quickstart_releases_an_audited_model_reproducibly(tmp_path: Path, monkeypatch, capsys):
    first = run_in(tmp_path / "one", monkeypatch)
    out = capsys.readouterr().out
    assert "==> release: runs/quickstart/release" in out and "'LibreOffice' ->" in out
    assert "reasoning accuracy" in out
    assert "atom eval: release runs/quickstart/release (step 4)" in out
    assert any(line.split()[:4] == ["arc_easy:rc_0shot", "ARC-Easy", "6", "acc_norm"] for line in out.splitlines())
    metrics = (tmp_path / "one/runs/quickstart/pretrain/metrics.jsonl").read_text()
    assert '"eval/arc_easy:rc_0shot/acc_norm"' in metrics and '"eval/hellaswag:rc_0shot/acc"' in metrics
    card = (first / "README.md").read_text()
    assert "Stage 1 (midtrain), benchmarks in-loop at step 4" in card
    assert "| hellaswag:rc_0shot | HellaSwag | 20 |" in card
    assert "The newest source of the training data is `libreoffice-help-" in card and "published 2026-06-06" in card
    assert "| GSM8K | 2021-10 | yes | 1,319 | 0 | 0 |" in card
    report = audit_release(first)
    assert report.ok, report.render(verbose=False)
    second = run_in(tmp_path / "two", monkeypatch)
    assert (first / "SHA256SUMS").read_bytes() == (second / "SHA256SUMS").read_bytes()
