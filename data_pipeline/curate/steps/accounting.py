"""Per-stage accounting: every document entering a stage is kept or dropped with a reason.

Each stage writes, per task, `counts/<stage>/<rank>.json` ({documents_in, documents_kept, dropped,
bytes_in, bytes_out, documents_modified, seconds}) once its input is exhausted, and the dropped
documents to `excluded/<stage>/<rank>.jsonl`. Both are rewritten whole when a task reruns, so a
task killed half way leaves nothing that a rerun would not replace.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from core.rundir import write_json

PROGRESS_EVERY_S = 30.0


def text_bytes(doc: Document) -> int:
    return len(doc.text.encode("utf-8", "surrogatepass"))


class StageCounts:
    """Counts of one stage in one task."""

    def __init__(self, stage: str):
        self.stage = stage
        self.documents_in = 0
        self.documents_kept = 0
        self.documents_modified = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.seconds = 0.0
        self.dropped: Counter[str] = Counter()
        self._started = time.monotonic()
        self._last_log = self._started

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.stage, "documents_in": self.documents_in, "documents_kept": self.documents_kept,
            "dropped": dict(sorted(self.dropped.items())), "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "documents_modified": self.documents_modified, "seconds": round(self.seconds, 3),
        }

    def maybe_log_progress(self, rank: int) -> None:
        now = time.monotonic()
        if now - self._last_log >= PROGRESS_EVERY_S:
            self._last_log = now
            rate = self.documents_in / max(self.seconds, 1e-9)
            logger.info(f"[{self.stage} task {rank}] {self.documents_in} docs in, {self.documents_kept} kept, "
                        f"{rate:.1f} docs/s in this stage")

    def save(self, counts_dir: str, rank: int, extra: dict | None = None) -> None:
        data = self.to_dict() | (extra or {})
        write_json(Path(counts_dir) / self.stage / f"{rank:05d}.json", data)


def exclusion_record(doc: Document, stage: str, reason: str, text: bool = True) -> dict[str, Any]:
    """What an exclusion file says of a dropped document; `text` False leaves the text out."""
    meta = {k: v for k, v in doc.metadata.items() if k not in ("html",)}
    record = {"id": doc.id, "stage": stage, "reason": reason, "metadata": meta}
    if text:
        record["text"] = doc.text
    return record


class ExclusionFile:
    """Dropped documents of one stage and task, streamed to a temporary file, published at close."""

    def __init__(self, directory: str | None, stage: str, rank: int, text: bool = True):
        self.path = Path(directory) / f"{rank:05d}.jsonl" if directory else None
        self.stage = stage
        self.text = text
        self._fh: TextIO | None = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def write(self, doc: Document, reason: str, **extra: Any) -> None:
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path.with_name(f".{self.path.name}.tmp"), "w", encoding="utf-8")
        record = exclusion_record(doc, self.stage, reason, self.text) | extra
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._fh is not None and self.path is not None:
            self._fh.close()
            os.replace(self._fh.name, self.path)
            self._fh = None


class CurationStep(PipelineStep):
    """A stage of our own: `process(doc)` returns the (possibly changed) document, or a drop reason."""

    type = "🧮 - ATOM"
    stage: str = "stage"
    exclusion_text: bool = True  # False for stages before PII masking: their drops would hold unmasked text

    def __init__(self, counts_dir: str, exclusion_dir: str | None = None):
        super().__init__()
        self.counts_dir = counts_dir
        self.exclusion_dir = exclusion_dir

    def process(self, doc: Document) -> Document | str:
        raise NotImplementedError

    def setup(self) -> None:
        """Load models or lists; called once per task before the first document (cache per process)."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts = StageCounts(self.stage)
        excluded = ExclusionFile(self.exclusion_dir, self.stage, rank, self.exclusion_text)
        started = time.perf_counter()
        self.setup()
        counts.seconds += time.perf_counter() - started
        for doc in data or ():
            size_in = text_bytes(doc)
            text_before = doc.text
            counts.documents_in += 1
            counts.bytes_in += size_in
            started = time.perf_counter()
            with self.track_time():
                result = self.process(doc)
            counts.seconds += time.perf_counter() - started
            if isinstance(result, str):
                counts.dropped[result] += 1
                self.stat_update(f"dropped_{result}")
                excluded.write(doc, result, **doc.metadata.pop("_exclusion_extra", {}))
                continue
            counts.documents_kept += 1
            if result.text != text_before:
                counts.documents_modified += 1
            counts.bytes_out += text_bytes(result) if result.text is not text_before else size_in
            self.stat_update("kept")
            counts.maybe_log_progress(rank)
            yield result
        excluded.close()
        counts.save(self.counts_dir, rank)


class AccountedStep(PipelineStep):
    """Wrap a datatrove step that drops documents without saying why (dedup filters): counts in/out,
    and every document it drops is counted under `reason`."""

    type = "🧮 - ATOM"

    def __init__(self, inner: PipelineStep, stage: str, reason: str, counts_dir: str):
        self.name = f"{stage} ({inner.name})"  # before PipelineStep.__init__, which names the stats by it
        super().__init__()
        self.inner = inner
        self.stage = stage
        self.reason = reason
        self.counts_dir = counts_dir

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts = StageCounts(self.stage)

        outside = 0.0  # time spent upstream and downstream, not in the wrapped step

        def counted(docs):
            nonlocal outside
            iterator = iter(docs or ())
            while True:
                started = time.perf_counter()
                doc = next(iterator, None)
                outside += time.perf_counter() - started
                if doc is None:
                    return
                counts.documents_in += 1
                counts.bytes_in += text_bytes(doc)
                yield doc

        started = time.perf_counter()
        for doc in self.inner.run(counted(data), rank, world_size):
            counts.documents_kept += 1
            counts.bytes_out += text_bytes(doc)
            paused = time.perf_counter()
            yield doc
            outside += time.perf_counter() - paused
        counts.seconds = max(time.perf_counter() - started - outside, 0.0)
        dropped = counts.documents_in - counts.documents_kept
        if dropped:
            counts.dropped[self.reason] = dropped
        counts.save(self.counts_dir, rank)
