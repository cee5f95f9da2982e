"""Config errors are caught before any work starts, and the CLI reports them in one line."""

from __future__ import annotations

import pytest

from atom.cli import main
from core.config import ConfigError
from data_pipeline.curate.pipeline import build_phases, plan
from tests.data_pipeline.curate_helpers import SAMPLE_CONFIG, sample_config


def test_missing_input_path(tmp_path, capsys):
    run_dir = tmp_path / "run"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {SAMPLE_CONFIG}\nsources:\n  - {{name: web, kind: warc, path: /nonexistent/corpus}}\n")
    code = main(["data", str(bad), "--set", f"run.dir={run_dir}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "input path not found: /nonexistent/corpus" in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_unknown_stage(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {SAMPLE_CONFIG}\nstages:\n  dedupe: {{enabled: true}}\n")
    assert main(["data", str(bad), "--set", f"run.dir={tmp_path / 'run'}"]) == 2
    assert "stages.dedupe" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_filter_parameter(tmp_path):
    config = sample_config(tmp_path / "run", "stages.c4.params.min_sentences=3")
    with pytest.raises(ConfigError, match="min_sentences"):
        build_phases(config)


def test_dry_run_touches_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["data", str(SAMPLE_CONFIG), "--set", f"run.dir={run_dir}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "minhash_buckets x14" in out and "curate x4" in out
    assert not run_dir.exists()


def test_disabled_stages_leave_the_plan(tmp_path):
    config = sample_config(tmp_path / "run", "stages.minhash.enabled=false", "stages.exact_dedup.enabled=false",
                           "stages.url_filter.enabled=false")
    names = [p.name for p in build_phases(config)]
    assert names == ["curate", "manifest"]
    assert not any("url_filter" in line for line in plan(config))


def test_extraction_skip_elements_leave_navigation_out_and_bad_selectors_are_refused():
    """A DocBook page's navigation header repeats its title; skipping it by CSS selector leaves the title once.
    A selector that does not parse is a config error naming it, before any work."""
    from pydantic import ValidationError

    from data_pipeline.curate.config import ExtractionConfig
    from data_pipeline.curate.steps.transform import resiliparse_extract

    page = ('<html><body><div class="navheader"><table><tr><th>21.14. BSD Authentication</th></tr>'
            '<tr><td>Prev</td><td>Up</td><td>Next</td></tr></table></div><div class="sect1"><h1>21.14. BSD '
            'Authentication</h1><p>This authentication method operates similarly to password.</p></div>'
            '<div class="navfooter"><table><tr><td>Prev</td><td>Home</td><td>Next</td></tr></table></div>'
            '</body></html>')
    assert resiliparse_extract(page, True).count("BSD Authentication") == 2
    cfg = ExtractionConfig(skip_elements=[".navheader", ".navfooter"])
    text = resiliparse_extract(page, True, cfg.skip_elements)
    assert text.count("BSD Authentication") == 1 and "Prev" not in text and "similarly to password" in text
    with pytest.raises(ValidationError, match="'div..x' is not a CSS selector"):
        ExtractionConfig(skip_elements=["div..x"])
