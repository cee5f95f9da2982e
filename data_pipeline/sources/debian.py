"""Build a raw corpus from Debian packages: `apt-get download` + `dpkg-deb -x`, nothing installed.

    python -m data_pipeline.sources.debian OUT PKG [PKG ...] [--glob '**/*.html'] [--max-files N]

For each package, OUT/<package>/ receives:
  files/<path inside the package>   the selected documents (evenly spaced over the sorted list)
  copyright                         the package's /usr/share/doc/<package>/copyright, verbatim
  source.json                       {name, package, version, released (the date of the version's changelog
                                    entry), license (SPDX), url_prefix, files, bytes}
and the command prints the `sources:` YAML entries for a curation config. The license is the
`License:` of the DEP-5 `Files: *` stanza, else recognised from the copyright text, else a
`LicenseRef-` naming the copyright file; `--license` overrides it.
"""

from __future__ import annotations

import argparse
import email.utils
import fnmatch
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from core.config import ConfigError
from core.rundir import write_json

SOURCE_FILE = "source.json"

# Copyright texts that are not DEP-5 but say plainly which license they are.
KNOWN_LICENSE_TEXTS = [
    ("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2", "PSF-2.0"),
    ("GNU GENERAL PUBLIC LICENSE\n                       Version 2", "GPL-2.0-only"),
    ("Mozilla Public License Version 2.0", "MPL-2.0"),
    ("Creative Commons Attribution-ShareAlike 3.0", "CC-BY-SA-3.0"),
]
# DEP-5 short names that differ from their SPDX ids.
DEP5_TO_SPDX = {"GPL-2": "GPL-2.0-only", "GPL-2+": "GPL-2.0-or-later", "GPL-3": "GPL-3.0-only",
                "GPL-3+": "GPL-3.0-or-later", "LGPL-2.1": "LGPL-2.1-only", "LGPL-2.1+": "LGPL-2.1-or-later",
                "Apache-2": "Apache-2.0", "Expat": "MIT", "CC-BY-SA-3": "CC-BY-SA-3.0"}


def license_from_copyright(text: str, package: str) -> str:
    """SPDX id of the package's main license, read from its copyright file."""
    for stanza in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", stanza, re.MULTILINE):
            match = re.search(r"^License:[ \t]*(\S.*)$", stanza, re.MULTILINE)
            if match:
                name = match.group(1).strip()
                # "A or B" / "A and B": keep the SPDX expression form
                parts = [DEP5_TO_SPDX.get(p, p) for p in re.split(r"\s+(or|and)\s+", name)]
                return " ".join(p.upper() if p in ("or", "and") else p for p in parts)
    for needle, spdx in KNOWN_LICENSE_TEXTS:
        if needle in text:
            return spdx
    return f"LicenseRef-debian-{package}-copyright"


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return proc.stdout


def released_date(root: Path, package: str) -> str | None:
    """YYYY-MM-DD of the newest entry of the package's changelog.Debian.gz (its trailer line
    ` -- Maintainer <mail>  Sat, 06 Jun 2026 23:07:23 +0200`); None when the package ships none."""
    changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
    if not changelog.is_file():
        return None
    with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" -- ") and "  " in line[4:]:
                return email.utils.parsedate_to_datetime(line[4:].split("  ", 1)[1].strip()).date().isoformat()
    return None


def evenly_spaced(items: list[str], count: int) -> list[str]:
    """`count` items spread evenly over `items` (all of them when count <= 0 or larger)."""
    if count <= 0 or count >= len(items):
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def import_package(package: str, out: Path, glob: str, max_files: int, license: str | None = None,
                   deb: Path | None = None) -> dict:
    """Download (or take `deb`), unpack, select files and write OUT/<package>/; returns source.json."""
    with tempfile.TemporaryDirectory(prefix=f"atom-deb-{package}-") as tmp:
        tmp_path = Path(tmp)
        if deb is None:
            _run(["apt-get", "download", package], tmp_path)
            debs = sorted(tmp_path.glob("*.deb"))
            if not debs:
                raise ConfigError(f"apt-get download {package}: no .deb file produced")
            deb = debs[0]
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], tmp_path).strip()
        root = tmp_path / "root"
        _run(["dpkg-deb", "-x", str(deb), str(root)], tmp_path)
        copyright_file = root / "usr/share/doc" / package / "copyright"
        copyright_text = ""
        if copyright_file.is_file():
            copyright_text = copyright_file.read_text(encoding="utf-8", errors="replace")
        spdx = license or license_from_copyright(copyright_text, package)
        released = released_date(root, package)
        candidates = sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and fnmatch.fnmatch(p.relative_to(root).as_posix(), glob)
        )
        chosen = evenly_spaced(candidates, max_files)
        dest = out / package
        if dest.exists():
            shutil.rmtree(dest)
        (dest / "files").mkdir(parents=True)
        total = 0
        for rel in chosen:
            target = dest / "files" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, target)
            total += target.stat().st_size
        if copyright_text:
            (dest / "copyright").write_text(copyright_text, encoding="utf-8")
    record = {"name": package, "package": package, "version": version, "released": released, "license": spdx,
              "url_prefix": "file:///", "files": len(chosen), "bytes": total, "glob": glob}
    write_json(dest / SOURCE_FILE, record)
    return record


def source_yaml(record: dict, out: Path) -> str:
    return (f"  - name: {record['name']}\n    kind: files\n    path: {(out / record['name'] / 'files').as_posix()}\n"
            f"    license: {record['license']}\n    version: \"{record['version']}\"\n"
            + (f"    released: \"{record['released']}\"\n" if record.get("released") else "")
            + f"    url_prefix: \"{record['url_prefix']}\"\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.sources.debian", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="corpus directory to write")
    parser.add_argument("packages", nargs="+", help="Debian package names, e.g. libreoffice-help-de python3.11-doc")
    parser.add_argument("--glob", default="**/*.html", help="files to take from each package [**/*.html]")
    parser.add_argument("--max-files", type=int, default=0, help="at most this many files per package, evenly spaced")
    parser.add_argument("--license", default=None, help="SPDX id to record instead of the detected one")
    args = parser.parse_args(argv)
    try:
        print("sources:")
        for package in args.packages:
            record = import_package(package, args.out, args.glob, args.max_files, args.license)
            print(source_yaml(record, args.out), end="")
            print(f"# {package} {record['version']}: {record['files']} files, {record['bytes']} bytes, "
                  f"{record['license']}", file=sys.stderr)
    except ConfigError as exc:
        print(f"debian importer: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
