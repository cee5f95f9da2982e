"""`atom audit`: an untouched dataset/mixture passes; each kind of tampering fails, naming the file."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from atom.cli import main
from data_pipeline.audit import audit
from data_pipeline.manifest import file_record
from tests.data_pipeline.tokens_fixtures import built


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return built(tmp_path_factory)


@pytest.fixture
def copy(data, tmp_path):
    """A private copy of the dataset and mixture (same relative layout) to tamper with."""
    shutil.copytree(data["dataset"], tmp_path / "dataset")
    shutil.copytree(data["mixture"], tmp_path / "mixture")
    return tmp_path


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _save(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_untouched_dataset_and_mixture_pass(data, capsys):
    for path in (data["dataset"], data["mixture"]):
        report = audit(path)
        assert report.ok, report.render()
        assert main(["audit", str(path)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_flipping_one_byte_in_any_shard_fails_naming_it(copy, capsys):
    shards = [s["path"] for s in _manifest(copy / "dataset")["shards"]]
    for shard in shards:
        path = copy / "dataset" / shard
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
        report = audit(copy / "dataset")
        assert not report.ok and shard in report.failing_files()
        assert main(["audit", str(copy / "dataset")]) == 1
        assert f"FAIL {shard}: sha256 and size" in capsys.readouterr().out
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    assert audit(copy / "dataset").ok


def test_deleting_a_shard_fails_naming_it(copy):
    (copy / "dataset" / "tokens" / "00001.ds").unlink()
    report = audit(copy / "dataset")
    assert "tokens/00001.ds" in report.failing_files()
    assert any("missing" in c.detail for c in report.failures)


def test_editing_a_count_in_the_manifest_fails_naming_it(copy):
    manifest = _manifest(copy / "dataset")
    manifest["shards"][0]["n_tokens"] += 1
    _save(copy / "dataset", manifest)
    report = audit(copy / "dataset")
    assert "manifest.json" in report.failing_files()
    assert any(c.check == "token count" for c in report.failures)

    manifest = _manifest(copy / "mixture")
    manifest["sources"]["stdlib-api-docs"]["docs"] -= 1
    _save(copy / "mixture", manifest)
    assert "manifest.json" in audit(copy / "mixture").failing_files()


def test_removing_a_license_fails_naming_the_file(copy):
    # in the provenance table (re-hashed in the manifest, so only the license check can catch it)
    root = copy / "dataset"
    table = pq.read_table(root / "provenance.parquet")
    licenses = table.column("license").to_pylist()
    licenses[7] = ""
    table = table.set_column(table.schema.get_field_index("license"), "license",
                             __import__("pyarrow").array(licenses))
    pq.write_table(table, root / "provenance.parquet")
    manifest = _manifest(root)
    manifest["provenance"].update(file_record(root / "provenance.parquet", root))
    _save(root, manifest)
    report = audit(root)
    failing = {(c.file, c.check) for c in report.failures}
    assert ("provenance.parquet", "every document has a license") in failing

    # in the manifest's per-source record
    manifest = _manifest(copy / "mixture")
    manifest["sources"]["stdlib-module-docs"]["licenses"] = {}
    _save(copy / "mixture", manifest)
    assert ("manifest.json", "source has a license") in {(c.file, c.check) for c in audit(copy / "mixture").failures}


def test_allow_list_from_cli_and_config(data, tmp_path, capsys):
    assert main(["audit", str(data["dataset"]), "--allow-license", "MIT"]) == 1
    assert "licenses within allow-list" in capsys.readouterr().out
    assert main(["audit", str(data["dataset"]), "--allow-license", "PSF-2.0"]) == 0
    cfg = tmp_path / "policy.yaml"
    cfg.write_text("allow_licenses: [Apache-2.0]\n")
    assert main(["audit", str(data["mixture"]), "--config", str(cfg)]) == 1
    cfg.write_text("allow_licenses: [Apache-2.0, PSF-2.0]\n")
    assert main(["audit", str(data["mixture"]), "--config", str(cfg)]) == 0


def test_mixture_notices_tampered_sequence_and_datasets(copy):
    seq = copy / "mixture" / "sequence.npy"
    raw = bytearray(seq.read_bytes())
    raw[-3] ^= 0x10
    seq.write_bytes(bytes(raw))
    assert "sequence.npy" in audit(copy / "mixture").failing_files()
    seq.write_bytes(bytes(raw[:-3] + bytes([raw[-3] ^ 0x10]) + raw[-2:]))
    assert audit(copy / "mixture").ok
    shard = copy / "dataset" / "tokens" / "00002.ds"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert "../dataset/tokens/00002.ds" in audit(copy / "mixture").failing_files()
    shutil.rmtree(copy / "dataset")
    assert "../dataset/manifest.json" in audit(copy / "mixture").failing_files()


def test_missing_path_is_a_user_error(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nope")]) == 2
    assert "no such dataset" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty")]) == 1
    assert "FAIL manifest.json: present" in capsys.readouterr().out
