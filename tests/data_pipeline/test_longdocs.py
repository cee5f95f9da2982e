"""Long-document selection: a curated run in, the long documents out, every document accounted for."""

from __future__ import annotations

import json

import pytest

from core.config import ConfigError, RunConfig
from data_pipeline.longdocs import LongDocsConfig
from data_pipeline.longdocs import run as longdocs
from data_pipeline.tokens.curated import open_curated
from tests.data_pipeline.tokens_fixtures import stdlib_documents, write_curated_run


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    docs = stdlib_documents(40)
    return write_curated_run(tmp_path_factory.mktemp("ld") / "curated", docs), docs


def test_selects_long_documents_per_source(curated, tmp_path):
    path, docs = curated
    cfg = LongDocsConfig(run=RunConfig(dir=str(tmp_path / "long")), input=str(path), min_chars=2000,
                         per_source={"stdlib-module-docs": 500})
    out = open_curated(longdocs(cfg))  # the output is itself a valid curated run
    expected = [d for d in docs if len(d["text"]) >= (500 if d["source"] == "stdlib-module-docs" else 2000)]
    assert out.n_docs == len(expected) and 0 < len(expected) < len(docs)
    stage = json.loads((tmp_path / "long" / "manifest.json").read_text())["stages"][-1]
    assert stage["name"] == "longdocs" and stage["documents_in"] == len(docs)
    assert stage["documents_kept"] + sum(stage["dropped"].values()) == len(docs)


def test_source_selection_and_bad_input(curated, tmp_path):
    path, docs = curated
    cfg = LongDocsConfig(run=RunConfig(dir=str(tmp_path / "api")), input=str(path), min_chars=1,
                         sources=["stdlib-api-docs"])
    assert open_curated(longdocs(cfg)).sources == {"stdlib-api-docs": sum(d["source"] == "stdlib-api-docs"
                                                                           for d in docs)}
    with pytest.raises(ConfigError, match="nosuch not in"):
        longdocs(LongDocsConfig(run=RunConfig(dir=str(tmp_path / "x")), input=str(path), min_chars=1,
                                sources=["nosuch"]))
    with pytest.raises(ConfigError, match="no document of .* is long enough"):
        longdocs(LongDocsConfig(run=RunConfig(dir=str(tmp_path / "y")), input=str(path), min_chars=10**9))


def test_audit_redoes_the_selection_from_the_parent(curated, tmp_path, capsys):
    """`atom audit` on a longdocs run passes untouched and fails a dropped row, an edited count or a parent
    that is no longer the one pinned, naming what differs."""
    import shutil

    import pyarrow.parquet as pq

    from atom.cli import main

    path, _ = curated
    run = longdocs(LongDocsConfig(run=RunConfig(dir=str(tmp_path / "long")), input=str(path), min_chars=2000,
                                  per_source={"stdlib-module-docs": 500}))
    assert main(["audit", str(run)]) == 0
    assert "longdocs run" in capsys.readouterr().out

    def fails(edit, check: str) -> None:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy)
        edit(copy)
        assert main(["audit", str(copy)]) == 1
        out = capsys.readouterr().out
        assert any(line.startswith("FAIL") and check in line for line in out.splitlines()), out

    def drop_row(copy):
        shard = next((copy / "curated").glob("*.parquet"))
        pq.write_table(pq.read_table(shard).slice(1), shard)

    def edit_manifest(key, value):
        def edit(copy):
            manifest = json.loads((copy / "manifest.json").read_text())
            manifest["stages"][-1]["dropped"][key] = value
            (copy / "manifest.json").write_text(json.dumps(manifest))
        return edit

    fails(drop_row, "sha256 and size")
    fails(edit_manifest("too_short", 0), "stages[-1].dropped")
    fails(lambda copy: (copy / "config.yaml").write_text((copy / "config.yaml").read_text()
                                                         .replace("min_chars: 2000", "min_chars: 10")),
          "stages[-1].documents_kept")
