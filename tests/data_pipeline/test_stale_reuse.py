"""A finished stage is reused only while its config, its inputs and atom's code are unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from atom.quickstart import reuse_verdict
from core import fingerprint
from core.config import ConfigError, ConfigModel, RunConfig
from core.fingerprint import path_fingerprint, source_digest
from core.rundir import INPUTS_FILE, RunDir
from core.stage import Stage
from tests.data_pipeline.curate_helpers import REPO_ROOT
from tests.data_pipeline.test_curate_bad_input import MINIMAL, real_pages


class Toy(ConfigModel):
    run: RunConfig
    source: str


TOY = Stage("toy", "a toy stage", Toy, plan=lambda c: [], run=lambda c: None, inputs=lambda c: {"source": c.source})


def toy_run(tmp_path: Path) -> tuple[Toy, Path]:
    source = tmp_path / "pages"
    source.mkdir()
    (source / "a.html").write_text("<p>one</p>")
    return Toy(run=RunConfig(dir=str(tmp_path / "run")), source=str(source)), source


def claim(cfg: Toy, **kwargs) -> RunDir:
    return RunDir.claim(cfg.run.dir, "toy", cfg, inputs=TOY.inputs(cfg), **kwargs)


def test_a_changed_input_is_refused_naming_it(tmp_path: Path):
    cfg, source = toy_run(tmp_path)
    claim(cfg)
    claim(cfg)  # unchanged inputs: a requeued job re-enters its run
    (source / "b.html").write_text("<p>a page added after the run</p>")
    with pytest.raises(ConfigError, match=r"input 'source' changed.*run\.overwrite=true"):
        claim(cfg)
    claim(cfg, overwrite=True)  # the user asks for the work to be redone
    claim(cfg)


def test_code_change_refuses_reuse_of_a_finished_run_only(tmp_path: Path, monkeypatch):
    cfg, _ = toy_run(tmp_path)
    run = claim(cfg)
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "new code")
    claim(cfg)  # unfinished: a resume under new code is allowed (and records it)
    (run.path / "manifest.json").write_text("{}")
    claim(cfg)  # finished under the code running now: reusable
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "newer code")
    with pytest.raises(ConfigError, match="code changed since it finished"):
        claim(cfg)


def test_a_missing_input_is_refused_before_the_run_directory_exists(tmp_path: Path):
    cfg, source = toy_run(tmp_path)
    shutil.rmtree(source)
    with pytest.raises(ConfigError, match=f"key 'source': input not found: {source}"):
        claim(cfg)
    assert not Path(cfg.run.dir).exists()


def test_a_submitter_claim_records_no_fingerprint(tmp_path: Path):
    cfg, source = toy_run(tmp_path)
    run = RunDir.claim(cfg.run.dir, "toy", cfg)  # what `atom submit` does before the job starts
    assert not (run.path / INPUTS_FILE).exists()
    claim(cfg)  # the job's own claim then records it
    assert (run.path / INPUTS_FILE).is_file()


def test_path_fingerprint_sees_every_file_and_no_absolute_path(tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "elsewhere" / "two"
    for root in (one, two):
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "page.html").write_text("<p>same</p>")
    assert path_fingerprint(one) == path_fingerprint(two)
    (two / ".hidden").write_text("x")
    assert path_fingerprint(one) != path_fingerprint(two)
    (one / "manifest.json").write_text('{"a": 1}')  # an atom run is named by its final record
    before = path_fingerprint(one)
    (one / "sub" / "page.html").write_text("<p>edited</p>")
    assert path_fingerprint(one) == before
    (one / "manifest.json").write_text('{"a": 2}')
    assert path_fingerprint(one) != before


def test_source_digest_changes_with_any_source_edit(tmp_path: Path):
    package = tmp_path / "pretrain"
    (package / "__pycache__").mkdir(parents=True)
    (package / "model.py").write_text("X = 1\n")
    before = source_digest(tmp_path)
    (package / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (package / "notes.txt").write_text("not code")
    assert source_digest(tmp_path) == before
    (package / "model.py").write_text("X = 2\n")
    assert source_digest(tmp_path) != before
    assert source_digest(REPO_ROOT) == fingerprint.code_fingerprint()


def test_quickstart_reuses_only_an_unchanged_finished_run(tmp_path: Path, monkeypatch):
    cfg, source = toy_run(tmp_path)
    assert reuse_verdict(TOY, cfg) == (False, "not run yet")
    run = claim(cfg)
    assert reuse_verdict(TOY, cfg) == (False, "not finished")
    (run.path / "summary.json").write_text("{}")
    assert reuse_verdict(TOY, cfg) == (True, "")
    (source / "a.html").write_text("<p>edited</p>")
    assert reuse_verdict(TOY, cfg) == (False, "input 'source' changed")
    (source / "a.html").write_text("<p>one</p>")
    assert reuse_verdict(TOY, cfg) == (True, "")
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "other code")
    assert reuse_verdict(TOY, cfg) == (False, "atom's code changed since it finished")


def test_curation_rerun_after_a_page_was_added_is_refused(tmp_path: Path):
    """The issue's case: exit 0 and 'all tasks have already been completed' before; now exit 2."""
    pages = tmp_path / "pages"
    pages.mkdir()
    first, second, added = real_pages(3)
    for page in (first, second):
        shutil.copy(page, pages / page.name)
    config = tmp_path / "curate.yaml"
    config.write_text(MINIMAL.format(run=tmp_path / "run")
                      + f"sources:\n  - {{name: help, kind: files, path: {pages}}}\n")
    cli = [sys.executable, "-m", "atom", "data", str(config)]
    done = subprocess.run(cli, cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    recorded = json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]
    assert recorded == {"sources.help": path_fingerprint(pages)}  # the manifest says which bytes were read
    shutil.copy(added, pages / added.name)
    again = subprocess.run(cli, cwd=REPO_ROOT, capture_output=True, text=True)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "input 'sources.help' changed" in again.stderr
    redo = subprocess.run([*cli, "--set", "run.overwrite=true"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert redo.returncode == 0, redo.stderr
    urls = [url for f in sorted((tmp_path / "run" / "curated").glob("*.parquet"))
            for url in pq.read_table(f, columns=["url"]).column("url").to_pylist()]
    assert len(urls) == 3 and any(url.endswith(added.name) for url in urls), urls
    redone = json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]
    assert redone == {"sources.help": path_fingerprint(pages)} != recorded
