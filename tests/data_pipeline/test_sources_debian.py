"""Importing a Debian package as a corpus source records its version and the date of that version (the
newest changelog entry): release cards compare it with the benchmarks' publication dates."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest

from core.config import ConfigError, load_config
from data_pipeline.curate import CurateConfig
from data_pipeline.sources.debian import import_package, source_yaml

CHANGELOG = """demo-doc (2.1-1) unstable; urgency=medium

  * New upstream release.

 -- Jane Maintainer <jane@example.org>  Sat, 06 Jun 2026 23:07:23 +0200

demo-doc (2.0-1) unstable; urgency=medium

  * Initial release.

 -- Jane Maintainer <jane@example.org>  Mon, 05 Jan 2026 10:00:00 +0000
"""


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_a_package_yields_its_version_and_release_date(tmp_path):
    root = tmp_path / "pkg"
    doc = root / "usr/share/doc/demo-doc"
    (doc / "html").mkdir(parents=True)
    (doc / "html/index.html").write_text("<html><body><p>Demo manual.</p></body></html>")
    (doc / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                                   "Files: *\nCopyright: 2026 Jane\nLicense: MIT\n")
    (doc / "changelog.Debian.gz").write_bytes(gzip.compress(CHANGELOG.encode()))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text("Package: demo-doc\nVersion: 2.1-1\nArchitecture: all\n"
                                         "Maintainer: Jane <jane@example.org>\nDescription: demo\n")
    deb = tmp_path / "demo-doc_2.1-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True,
                   capture_output=True)
    record = import_package("demo-doc", tmp_path / "corpus", "**/*.html", 0, deb=deb)
    assert (record["version"], record["released"], record["license"], record["files"]) == ("2.1-1", "2026-06-06",
                                                                                          "MIT", 1)
    config = tmp_path / "c.yaml"
    config.write_text(f"run: {{dir: {tmp_path / 'run'}}}\nsources:\n" + source_yaml(record, tmp_path / "corpus"))
    source = load_config(CurateConfig, config).sources[0]
    assert (source.version, source.released) == ("2.1-1", "2026-06-06")


def test_a_release_date_that_is_not_a_date_names_the_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"run: {{dir: {tmp_path / 'run'}}}\nsources:\n"
                      f"  - {{name: web, kind: jsonl, path: {tmp_path}, released: 'June 2026'}}\n")
    with pytest.raises(ConfigError, match=r"sources\.0\.released.*'June 2026' is not a date \(YYYY-MM-DD\)"):
        load_config(CurateConfig, config)
