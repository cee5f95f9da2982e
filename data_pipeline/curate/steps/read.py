"""Readers that give every document its provenance, and quarantine what is not a document.

`SourceReader` reads all configured sources (JSONL[.gz], Parquet, WARC[.gz], directories of HTML or
plain-text files). The files of all sources, sorted, are dealt round-robin to the tasks. Each record
becomes a `Document` whose metadata holds source, license, url, source_version and whether it is
HTML; its id is content-derived: sha256(source, url, raw content), stable across reruns and machines.
Each task also records a file record (relative path, bytes, sha256) of every input file it reads: the
manifest names each source by that content, not by where it lies.

A record that cannot be a document (malformed JSON, invalid UTF-8, empty, oversized, binary, a
truncated WARC record...) goes to `quarantine/<rank>.jsonl` with its reason; the `read` stage counts
it as dropped under that reason, so nothing disappears silently. Its preview (the record's start) is
masked like the `pii` stage masks documents: quarantine holds no PII that curated data would not.
A path the source's glob finds that is not read at all (a dot-file, a broken symlink, a FIFO) is counted
under its reason in the manifest (`sources.<name>.skipped`) and listed in `quarantine/skipped/<rank>.jsonl`.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import re
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from core.manifest import file_record
from core.rundir import write_atomic
from data_pipeline.curate.steps.accounting import StageCounts
from data_pipeline.curate.steps.transform import pii_masker

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
BINARY_SNIFF_BYTES = 8192
PREVIEW_CHARS = 200
# Masked before the preview is cut: any email or IP address that starts in the preview ends in the window.
PREVIEW_WINDOW = PREVIEW_CHARS + 1000
# A <meta charset="x"> or <meta http-equiv="Content-Type" content="text/html; charset=x"> in a page's head.
META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
META_SNIFF_BYTES = 4096
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
DEFAULT_GLOBS = {"jsonl": "**/*.jsonl*", "parquet": "**/*.parquet", "warc": "**/*.warc*", "files": "**/*"}


def document_id(source: str, url: str, raw: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(source.encode())
    digest.update(b"\0")
    digest.update(url.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    digest.update(raw)
    return digest.hexdigest()[:32]


@dataclass
class Quarantined:
    reason: str
    location: str
    detail: str = ""
    preview: str = ""


def _preview(raw: bytes | str) -> str:
    """The record's start, long enough to be masked before `PREVIEW_CHARS` of it are written."""
    if isinstance(raw, bytes):
        return raw[:PREVIEW_WINDOW].decode("utf-8", "backslashreplace")
    return raw[:PREVIEW_WINDOW]


def html_charset(raw: bytes) -> str | None:
    """The encoding an HTML file declares: its BOM, else a known `<meta>` charset; None when it declares none."""
    for bom, codec in BOMS:
        if raw.startswith(bom):
            return codec
    match = META_CHARSET.search(raw[:META_SNIFF_BYTES])
    if match is None:
        return None
    label = match.group(1).decode("ascii")
    try:
        return codecs.lookup(label).name
    except LookupError:  # an unknown label declares nothing (as browsers treat it)
        return None


def file_url(source: dict, path: Path, rel: str) -> str:
    """A valid URL for a `files` source's file: url_prefix + its percent-encoded relative path, else its file:// URI."""
    if source.get("url_prefix"):
        return source["url_prefix"] + urllib.parse.quote(rel)
    return path.absolute().as_uri()


def skip_reason(path: Path, rel: str) -> str | None:
    """Why a path the source's glob found is not read (None: it is read): every path is read or counted."""
    if any(part.startswith(".") for part in rel.split("/")):
        return "dotfile"  # hidden files and whatever lies in hidden directories (.git/, .cache/)
    if path.is_symlink() and not path.exists():
        return "broken_symlink"
    if not path.is_file():
        return "not_a_file"  # a FIFO, socket or device, or a link to one
    return None


def scan_source(source: dict) -> list[tuple[Path, str, str | None]]:
    """(absolute path, path relative to the source root, skip reason or None) of every non-directory the
    source's glob finds, sorted by relative path."""
    root = Path(source["path"]).resolve()
    if root.is_file():
        return [(root, root.name, None)]
    pattern = source.get("glob") or DEFAULT_GLOBS[source["kind"]]
    found = [(p, p.relative_to(root).as_posix()) for p in root.glob(pattern) if not p.is_dir()]
    return sorted(((p, rel, skip_reason(p, rel)) for p, rel in found), key=lambda item: item[1])


def list_source_files(source: dict) -> list[tuple[Path, str]]:
    """(absolute file, path relative to the source root) of the files of one source that are read, sorted."""
    return [(path, rel) for path, rel, reason in scan_source(source) if reason is None]


class SourceReader(PipelineStep):
    """Read every source; tasks take the sorted file list round-robin."""

    type = "📖 - READER"
    name = "atom sources"
    stage = "read"

    def __init__(self, sources: list[dict], max_document_bytes: int, counts_dir: str, quarantine_dir: str,
                 pii: dict[str, Any] | None = None):
        super().__init__()
        self.sources = sources
        self.max_document_bytes = max_document_bytes
        self.counts_dir = counts_dir
        self.quarantine_dir = quarantine_dir
        self.pii = pii  # the `pii` stage's masking settings (None: off), applied to quarantine previews

    # -- per kind: yield Document | Quarantined -------------------------------------------------

    def _document(self, source: dict, url: str, raw: bytes, text: str, html: bool, loc: str) -> Document | Quarantined:
        """The record as a document; every reader's size limit is on the UTF-8 bytes of its text."""
        if not text.strip():
            return Quarantined("empty_document", loc, preview=_preview(raw))
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_document_bytes:
            return Quarantined("oversized_document", loc, f"{size} UTF-8 bytes of text > {self.max_document_bytes}")
        meta = {"source": source["name"], "license": source["license"], "url": url,
                "source_version": source["version"], "html": html}
        return Document(text=text, id=document_id(source["name"], url, raw), metadata=meta)

    def _decode(self, raw: bytes, loc: str, charset: str = "utf-8") -> str | Quarantined:
        try:
            return raw.decode(charset)
        except (UnicodeDecodeError, LookupError) as exc:
            return Quarantined("invalid_utf8" if charset.lower() in ("utf-8", "utf8") else "undecodable_text",
                               loc, str(exc)[:200], _preview(raw))

    @staticmethod
    def _file_charset(raw: bytes) -> str:
        """An HTML file's declared encoding; undeclared: UTF-8 if it decodes, else what uchardet detects."""
        declared = html_charset(raw)
        if declared is not None:
            return declared
        try:
            raw.decode("utf-8")
            return "utf-8"
        except UnicodeDecodeError:
            from resiliparse.parse.encoding import detect_encoding

            return str(detect_encoding(raw))

    @classmethod
    def _record_charset(cls, content_type: str, raw: bytes, html: bool) -> str:
        """A WARC record's encoding: the HTTP Content-Type charset; undeclared there, an HTML payload's own
        declaration (BOM or <meta>) or detection, as for HTML files; plain text: UTF-8."""
        lowered = content_type.lower()
        if "charset=" in lowered:
            return lowered.split("charset=", 1)[1].split(";")[0].strip().strip('"') or "utf-8"
        return cls._file_charset(raw) if html else "utf-8"

    @staticmethod
    def _text_charset(raw: bytes) -> str:
        """A plain-text file's encoding: its BOM (UTF-8, UTF-16), else UTF-8. Plain text declares nothing else,
        and guessing a short file's code page is unreliable: undecodable text is quarantined, not guessed."""
        return next((codec for bom, codec in BOMS if raw.startswith(bom)), "utf-8")

    def read_files(self, source: dict, path: Path, rel: str) -> Iterator[Document | Quarantined]:
        loc = f"{source['name']}:{rel}"
        size = path.stat().st_size
        # No encoding takes more than 4 bytes a character, so such a file's text is over the limit too: not read.
        if size > 4 * self.max_document_bytes:
            yield Quarantined("oversized_document", loc, f"{size} bytes > 4 x {self.max_document_bytes}")
            return
        raw = path.read_bytes()
        if b"\0" in raw[:BINARY_SNIFF_BYTES] and not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            yield Quarantined("binary_file", loc, preview=_preview(raw))
            return
        html = source["html"] if source.get("html") is not None else path.suffix.lower() in HTML_SUFFIXES
        text = self._decode(raw, loc, self._file_charset(raw) if html else self._text_charset(raw))
        if isinstance(text, Quarantined):
            yield text
            return
        yield self._document(source, file_url(source, path, rel), raw, text, html, loc)

    def read_jsonl(self, source: dict, path: Path, rel: str) -> Iterator[Document | Quarantined]:
        opener = gzip.open if path.suffix == ".gz" else open
        lineno = 0
        try:
            with opener(path, "rb") as fh:
                for lineno, line in enumerate(fh, start=1):
                    loc = f"{source['name']}:{rel}:{lineno}"
                    if not line.strip():
                        continue
                    text = self._decode(line, loc)
                    if isinstance(text, Quarantined):
                        yield text
                        continue
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as exc:
                        yield Quarantined("malformed_json", loc, str(exc), _preview(line))
                        continue
                    yield from self._row(source, row, f"{source['url_prefix']}{rel}#L{lineno}", loc, line)
        except (OSError, EOFError, zlib.error) as exc:
            yield Quarantined("truncated_file", f"{source['name']}:{rel}:{lineno + 1}", str(exc)[:200])

    def _row(self, source: dict, row: Any, default_url: str, loc: str, raw: bytes) -> Iterator[Document | Quarantined]:
        if not isinstance(row, dict):
            yield Quarantined("malformed_json", loc, f"record is a {type(row).__name__}, not an object", _preview(raw))
            return
        text = row.get(source["text_key"])
        if not isinstance(text, str):
            yield Quarantined("missing_text", loc, f"no string field {source['text_key']!r}", _preview(raw))
            return
        url = row.get(source["url_key"])
        url = url if isinstance(url, str) and url else default_url
        html = bool(source.get("html"))
        yield self._document(source, url, text.encode("utf-8", "surrogatepass"), text, html, loc)

    def read_parquet(self, source: dict, path: Path, rel: str) -> Iterator[Document | Quarantined]:
        import pyarrow.parquet as pq

        try:
            pfile = pq.ParquetFile(path)
            columns = [c for c in (source["text_key"], source["url_key"]) if c in pfile.schema_arrow.names]
            index = 0
            for batch in pfile.iter_batches(columns=columns or None, batch_size=1024):
                for row in batch.to_pylist():
                    index += 1
                    loc = f"{source['name']}:{rel}#{index}"
                    yield from self._row(source, row, f"{source['url_prefix']}{rel}#{index}", loc, b"")
        except Exception as exc:  # pyarrow raises several types for a broken file
            yield Quarantined("unreadable_parquet", f"{source['name']}:{rel}", f"{type(exc).__name__}: {exc}"[:200])

    def read_warc(self, source: dict, path: Path, rel: str) -> Iterator[Document | Quarantined]:
        from warcio.archiveiterator import ArchiveIterator

        offset = 0
        try:
            with open(path, "rb") as fh:
                records = ArchiveIterator(fh)
                for record in records:
                    if record.rec_type not in ("response", "resource", "conversion"):
                        continue
                    declared = record.rec_headers.get_header("Content-Length")
                    raw = record.content_stream().read()
                    offset = records.get_record_offset()  # (reads the record to its end: after content)
                    loc = f"{source['name']}:{rel}@{offset}"
                    url = record.rec_headers.get_header("WARC-Target-URI") or f"{source['url_prefix']}{rel}@{offset}"
                    missing = getattr(record.raw_stream, "limit", 0) or 0
                    if missing > 0:  # the stream ended before Content-Length bytes
                        yield Quarantined("truncated_warc_record", loc,
                                          f"Content-Length {declared}, {missing} bytes missing", _preview(raw))
                        continue
                    ctype = (record.http_headers.get_header("Content-Type") if record.http_headers
                             else record.rec_headers.get_header("Content-Type")) or ""
                    if not any(t in ctype.lower() for t in ("text/html", "text/plain", "xhtml")):
                        yield Quarantined("non_text_record", loc, f"Content-Type {ctype!r}")
                        continue
                    html = source["html"] if source.get("html") is not None else "text/plain" not in ctype.lower()
                    text = self._decode(raw, loc, self._record_charset(ctype, raw, html))
                    if isinstance(text, Quarantined):
                        yield text
                        continue
                    yield self._document(source, url, raw, text, html, loc)
        except Exception as exc:  # warcio: ArchiveLoadFailed, EOFError, zlib errors on a cut file
            yield Quarantined("truncated_warc_record", f"{source['name']}:{rel}@{offset}",
                              f"{type(exc).__name__}: {exc}"[:200])

    # -- the step ----------------------------------------------------------------------------------

    def shard(self, rank: int, world_size: int) -> list[tuple[dict, Path, str, str | None]]:
        """This task's paths, skipped ones included so that exactly one task counts each."""
        items = [(source, *found) for source in self.sources for found in scan_source(source)]
        return items[rank::world_size]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        readers = {"files": self.read_files, "jsonl": self.read_jsonl, "parquet": self.read_parquet,
                   "warc": self.read_warc}
        counts = StageCounts(self.stage)
        mask = pii_masker(self.pii)
        per_source: dict[str, Counter] = {}
        inputs: dict[str, list[dict]] = {}  # source -> file records, from which the manifest names its content
        skipped: dict[str, Counter] = {}  # source -> reason -> paths not read
        quarantine: list[str] = []
        skipped_lines: list[str] = []
        quarantine_path = Path(self.quarantine_dir) / f"{rank:05d}.jsonl"
        skipped_path = Path(self.quarantine_dir) / "skipped" / f"{rank:05d}.jsonl"
        quarantine_path.unlink(missing_ok=True)
        skipped_path.unlink(missing_ok=True)
        shard = self.shard(rank, world_size)
        logger.info(f"[read task {rank}] {len(shard)} input paths")
        for i, (source, path, rel, reason) in enumerate(shard):
            if reason is not None:
                skipped.setdefault(source["name"], Counter())[reason] += 1
                skipped_lines.append(json.dumps({"source": source["name"], "location": f"{source['name']}:{rel}",
                                                 "reason": reason}, ensure_ascii=False))
                continue
            tally = per_source.setdefault(source["name"], Counter())
            inputs.setdefault(source["name"], []).append({**file_record(path, path.parent), "path": rel})
            started = time.perf_counter()
            for item in readers[source["kind"]](source, path, rel):
                counts.documents_in += 1
                tally["records"] += 1
                if isinstance(item, Quarantined):
                    counts.dropped[item.reason] += 1
                    tally["quarantined"] += 1
                    quarantine.append(json.dumps({"source": source["name"], "location": item.location,
                                                  "reason": item.reason, "detail": item.detail,
                                                  "preview": mask(item.preview)[:PREVIEW_CHARS]},
                                                 ensure_ascii=False))
                    continue
                size = len(item.text.encode("utf-8", "surrogatepass"))
                counts.documents_kept += 1
                counts.bytes_in += size
                counts.bytes_out += size
                tally["documents"] += 1
                tally["bytes"] += size
                counts.seconds += time.perf_counter() - started
                yield item
                started = time.perf_counter()
            counts.seconds += time.perf_counter() - started
            self.stat_update("input_files")
            if (i + 1) % 200 == 0:
                logger.info(f"[read task {rank}] {i + 1}/{len(shard)} files, {counts.documents_kept} documents")
        if quarantine:
            write_atomic(quarantine_path, "\n".join(quarantine) + "\n")
        if skipped_lines:
            skipped_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(skipped_path, "\n".join(skipped_lines) + "\n")
        counts.save(self.counts_dir, rank,
                    {"sources": {name: dict(sorted(t.items())) for name, t in sorted(per_source.items())},
                     "inputs": inputs,
                     "skipped": {name: dict(sorted(t.items())) for name, t in sorted(skipped.items())}})


class RankFileReader(PipelineStep):
    """Read back the intermediate JSONL a previous phase wrote for this rank (none: no documents)."""

    type = "📖 - READER"

    def __init__(self, folder: str):
        self.name = f"atom intermediate {Path(folder).name}"  # before PipelineStep.__init__ names the stats
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = Path(self.folder) / f"{rank:05d}.jsonl"
        if not path.is_file():
            return
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                yield Document(text=row["text"], id=row["id"], metadata=row["metadata"])


class RankFileWriter(PipelineStep):
    """Write this rank's documents to an intermediate JSONL (atomically, at the end) and pass them on."""

    type = "💽 - WRITER"

    def __init__(self, folder: str):
        self.name = f"atom intermediate {Path(folder).name}"  # before PipelineStep.__init__ names the stats
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = Path(self.folder) / f"{rank:05d}.jsonl"
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        written = 0
        with open(tmp, "w", encoding="utf-8") as fh:
            for doc in data or ():
                fh.write(json.dumps({"id": doc.id, "text": doc.text, "metadata": doc.metadata}, ensure_ascii=False))
                fh.write("\n")
                written += 1
                yield doc
        if written:
            os.replace(tmp, path)
        else:
            tmp.unlink()
