"""Bad input is quarantined with its reason and counted; the run goes on."""

from __future__ import annotations

import codecs
import io
import json
import shutil

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from core.config import load_config
from data_pipeline.audit import audit_data
from data_pipeline.curate import CurateConfig
from data_pipeline.curate.pipeline import run
from tests.data_pipeline.curate_helpers import REPO_ROOT, read_manifest

LO_EN = REPO_ROOT / "data_pipeline/sample_corpus/libreoffice-help-en-us/files"

MINIMAL = """
executor: {{tasks: 1, workers: 1}}
stages:
  language: {{enabled: false}}
  url_filter: {{enabled: false}}
  gopher_repetition: {{enabled: false}}
  gopher_quality: {{enabled: false}}
  c4: {{enabled: false}}
  fineweb_quality: {{enabled: false}}
  exact_dedup: {{enabled: false}}
  minhash: {{enabled: false}}
  pii: {{enabled: false}}
  decontamination: {{enabled: false}}
run: {{dir: {run}}}
"""


def real_pages(n: int) -> list:
    return sorted(LO_EN.rglob("*.html"))[:n]


def write_warc(path, pages, truncate_last: int) -> None:
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=False)
    for i, page in enumerate(pages):
        payload = page.read_bytes()
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        record = writer.create_warc_record(f"https://help.example.org/page{i}.html", "response",
                                           payload=io.BytesIO(payload), http_headers=headers)
        writer.write_record(record)
    path.write_bytes(buffer.getvalue()[:-truncate_last])


def test_bad_records_quarantined(tmp_path, capsys):
    good = real_pages(6)
    text = "Real text of a LibreOffice help page, long enough to be a document."
    jsonl = tmp_path / "docs.jsonl"
    with open(jsonl, "wb") as fh:
        fh.write(json.dumps({"text": text, "url": "https://a.example/1"}).encode() + b"\n")
        fh.write(b'{"text": "cut off in the middle\n')  # malformed JSON
        fh.write(b'{"text": "caf\xe9 au lait"}\n')  # invalid UTF-8
        fh.write(b'{"text": "   "}\n')  # empty document
        fh.write(b'{"text": "' + b"word " * 10_000_000 + b'"}\n')  # a 50 MB document
    html_dir = tmp_path / "html"
    html_dir.mkdir()
    for page in good[:3]:
        shutil.copy(page, html_dir / page.name)
    (html_dir / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (html_dir / "empty.html").write_text("")
    warc = tmp_path / "crawl.warc"
    write_warc(warc, good[3:6], truncate_last=500)

    run_dir = tmp_path / "run"
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(
        "sources:\n"
        f"  - {{name: j, kind: jsonl, path: {jsonl}, license: CC0-1.0}}\n"
        f"  - {{name: h, kind: files, path: {html_dir}, license: MPL-2.0}}\n"
        f"  - {{name: w, kind: warc, path: {warc}, license: MPL-2.0}}\n" + MINIMAL.format(run=run_dir))
    run(load_config(CurateConfig, config_file))

    manifest = read_manifest(run_dir)
    assert manifest["quarantine"] == {
        "binary_file": 1, "empty_document": 2, "invalid_utf8": 1, "malformed_json": 1,
        "oversized_document": 1, "truncated_warc_record": 1,
    }
    read = manifest["stages"][0]
    assert read["documents_in"] == 5 + 5 + 3  # jsonl lines, files, WARC responses
    assert read["documents_kept"] == 1 + 3 + 2
    quarantined = [json.loads(line) for f in sorted((run_dir / "quarantine").glob("*.jsonl"))
                   for line in f.read_text().splitlines()]
    assert sorted(q["reason"] for q in quarantined) == sorted(
        r for r, n in manifest["quarantine"].items() for _ in range(n))
    assert any(q["location"].endswith("logo.png") for q in quarantined)
    assert any(q["location"] == f"j:{jsonl.name}:2" for q in quarantined)
    assert "quarantined: 7" in capsys.readouterr().out
    assert sum(o["documents"] for o in manifest["outputs"]) == 6


def curated(run_dir) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for f in sorted((run_dir / "curated").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def test_file_urls_are_valid_uris_that_name_the_file(tmp_path):
    """A path with a space and a non-ASCII letter is percent-encoded: the URL parses back to the file."""
    from urllib.parse import unquote, urlsplit
    from urllib.request import url2pathname

    deep = tmp_path / "deep dir" / "Übersicht"
    deep.mkdir(parents=True)
    page = deep / "page one.txt"
    page.write_text("Real text of a help page about the function wizard, long enough to be kept.\n")
    run_dir = tmp_path / "run"
    config_file = tmp_path / "urls.yaml"
    config_file.write_text(
        "sources:\n"
        f"  - {{name: local, kind: files, path: '{tmp_path / 'deep dir'}'}}\n"
        f"  - {{name: hosted, kind: files, path: '{tmp_path / 'deep dir'}', url_prefix: 'https://h.example/d/'}}\n"
        + MINIMAL.format(run=run_dir))
    run(load_config(CurateConfig, config_file))
    urls = {row["source"]: row["url"] for row in curated(run_dir)}
    for url in urls.values():
        assert url.isascii() and " " not in url, url
    local = urlsplit(urls["local"])
    assert local.scheme == "file" and local.netloc == "" and url2pathname(local.path) == str(page.resolve())
    assert urls["hosted"] == "https://h.example/d/%C3%9Cbersicht/page%20one.txt"
    assert unquote(urls["hosted"].removeprefix("https://h.example/d/")) == "Übersicht/page one.txt"


def test_every_path_found_is_read_or_counted_as_skipped(tmp_path):
    """Dot-files, files in dot-directories, broken symlinks and FIFOs are counted by reason and listed."""
    import os

    pages = tmp_path / "pages"
    (pages / ".git").mkdir(parents=True)
    for page in real_pages(2):
        shutil.copy(page, pages / page.name)
    (pages / ".notes.txt").write_text("A hidden note that is not part of the corpus.\n")
    (pages / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (pages / "gone.html").symlink_to(tmp_path / "deleted.html")
    (pages / "alias.html").symlink_to(pages / real_pages(1)[0].name)  # a link to a file is read
    os.mkfifo(pages / "pipe.txt")
    run_dir = tmp_path / "run"
    config_file = tmp_path / "skip.yaml"
    config_file.write_text(f"sources:\n  - {{name: h, kind: files, path: {pages}}}\n" + MINIMAL.format(run=run_dir))
    run(load_config(CurateConfig, config_file))

    source = read_manifest(run_dir)["sources"]["h"]
    assert source["records_in"] == 3
    assert source["skipped"] == {"broken_symlink": 1, "dotfile": 2, "not_a_file": 1}
    listed = [json.loads(line) for f in sorted((run_dir / "quarantine" / "skipped").glob("*.jsonl"))
              for line in f.read_text(encoding="utf-8").splitlines()]
    assert sorted((q["location"], q["reason"]) for q in listed) == [
        ("h:.git/HEAD", "dotfile"), ("h:.notes.txt", "dotfile"), ("h:gone.html", "broken_symlink"),
        ("h:pipe.txt", "not_a_file")]
    assert read_manifest(run_dir)["quarantine"] == {}
    assert audit_data(run_dir).ok, audit_data(run_dir).render()
    skipped_file = next((run_dir / "quarantine" / "skipped").glob("*.jsonl"))
    lines = skipped_file.read_text(encoding="utf-8").splitlines()
    skipped_file.write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")
    report = audit_data(run_dir)
    assert any(c.file == "manifest.json" and "sources.h.skipped" in c.check + c.detail
               for c in report.failures), report.render()


def test_max_document_bytes_counts_utf8_bytes_of_the_text_in_every_reader(tmp_path):
    """The text is 2n UTF-8 bytes, n characters and 6n bytes of escaped JSON: every reader judges it by 2n."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "é" * 40
    size = len(text.encode("utf-8"))
    assert len(text) < size < len(json.dumps({"text": text}))
    (tmp_path / "doc.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": [text]}), tmp_path / "doc.parquet")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "doc.txt").write_text(text, encoding="utf-8")
    sources = "".join(f"  - {{name: {kind}, kind: {kind}, path: {tmp_path / path}}}\n"
                      for kind, path in (("jsonl", "doc.jsonl"), ("parquet", "doc.parquet"), ("files", "files")))
    for limit, kept in ((size, 1), (size - 1, 0)):
        run_dir = tmp_path / f"run{limit}"
        config_file = tmp_path / f"limit{limit}.yaml"
        config_file.write_text(f"input: {{max_document_bytes: {limit}}}\nsources:\n{sources}"
                               + MINIMAL.format(run=run_dir))
        run(load_config(CurateConfig, config_file))
        manifest = read_manifest(run_dir)
        assert {name: s["documents"] for name, s in manifest["sources"].items()} == {
            "jsonl": kept, "parquet": kept, "files": kept}, limit
        assert manifest["quarantine"] == ({} if kept else {"oversized_document": 3})


LO_DE_PAGE = REPO_ROOT / ("data_pipeline/sample_corpus/libreoffice-help-de/files/usr/share/libreoffice/help/de/"
                          "text/shared/guide/data_reports.html")


def test_html_files_are_decoded_by_their_declared_or_detected_charset(tmp_path):
    """A German help page as Latin-1 (declared in <meta>), as cp1252 with no declaration, and as UTF-16 with a
    BOM: each is read, not quarantined as invalid_utf8, and its umlauts come out right."""
    page = LO_DE_PAGE.read_text(encoding="utf-8")
    assert 'charset=utf-8"' in page and "ü" in page
    pages = tmp_path / "pages"
    pages.mkdir()
    latin1 = page.replace("charset=utf-8", "charset=iso-8859-1")
    (pages / "latin1.html").write_bytes(latin1.encode("latin-1", "xmlcharrefreplace"))
    (pages / "undeclared.html").write_bytes(page.replace("charset=utf-8", "").encode("cp1252", "xmlcharrefreplace"))
    (pages / "utf16.html").write_bytes(codecs.BOM_UTF16_LE + page.encode("utf-16-le"))
    (pages / "plain.txt").write_bytes("Grüße aus Köln, ein Text in Latin-1.".encode("latin-1"))
    (pages / "plain16.txt").write_bytes(codecs.BOM_UTF16_LE + "Grüße aus Köln, in UTF-16.".encode("utf-16-le"))
    run_dir = tmp_path / "run"
    config_file = tmp_path / "charsets.yaml"
    config_file.write_text(f"sources:\n  - {{name: de, kind: files, path: {pages}}}\n" + MINIMAL.format(run=run_dir))
    run(load_config(CurateConfig, config_file))

    # plain text declares nothing but a BOM: UTF-16 with one is read, Latin-1 without one is quarantined
    assert read_manifest(run_dir)["quarantine"] == {"invalid_utf8": 1}
    texts = {row["url"].rsplit("/", 1)[1]: row["text"] for row in curated(run_dir)}
    assert sorted(texts) == ["latin1.html", "plain16.txt", "undeclared.html", "utf16.html"]
    assert texts["plain16.txt"] == "Grüße aus Köln, in UTF-16."
    reference = texts["latin1.html"]
    assert "ü" in reference and "Ã" not in reference and "\ufffd" not in reference
    assert texts["undeclared.html"] == reference and texts["utf16.html"] == reference


def test_warc_html_without_an_http_charset_is_decoded_by_its_own_declaration(tmp_path):
    """A crawler's record whose Content-Type names no charset: the page's <meta> (or detection) decides, as for
    files; a charset in the HTTP header still wins."""
    page = LO_DE_PAGE.read_text(encoding="utf-8")
    latin1 = page.replace("charset=utf-8", "charset=iso-8859-1").encode("latin-1", "xmlcharrefreplace")
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=False)
    for i, (ctype, payload) in enumerate([("text/html", latin1), ("text/html; charset=iso-8859-1", latin1),
                                          ("text/html", page.replace("charset=utf-8", "").encode("cp1252",
                                                                                                  "xmlcharrefreplace"))]):
        headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(f"https://help.example.org/de{i}.html", "response",
                                                      payload=io.BytesIO(payload), http_headers=headers))
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "de.warc").write_bytes(buffer.getvalue())
    run_dir = tmp_path / "run"
    config_file = tmp_path / "warc.yaml"
    config_file.write_text(f"sources:\n  - {{name: de, kind: warc, path: {crawl}}}\n" + MINIMAL.format(run=run_dir))
    run(load_config(CurateConfig, config_file))

    assert read_manifest(run_dir)["quarantine"] == {}
    texts = [row["text"] for row in curated(run_dir)]
    assert len(texts) == 3 and texts[0] == texts[1] == texts[2]
    assert "ü" in texts[0] and "Ã" not in texts[0] and "\ufffd" not in texts[0]
