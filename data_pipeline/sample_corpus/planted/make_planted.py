"""Regenerate planted.jsonl: real Python-tutorial text (python3.11-doc, PSF-2.0) with planted cases.

    python data_pipeline/sample_corpus/planted/make_planted.py PYTHON_DOC_HTML_DIR > planted.jsonl

PYTHON_DOC_HTML_DIR is usr/share/doc/python3.11/html of an unpacked python3.11-doc package
(`python -m data_pipeline.sources.debian` or `apt-get download python3.11-doc && dpkg-deb -x ...`).
Rows: an original page; its exact copy; a near copy (a few words changed); a page with HumanEval/2's
prompt pasted inside; a page with email and IP addresses. Tests and the quickstart check that the
copies are removed, the prompt is caught by decontamination and the addresses are masked.
"""

import gzip
import json
import sys
from pathlib import Path

from data_pipeline.curate.steps.decontam import BUILTIN_EVALS
from data_pipeline.curate.steps.transform import resiliparse_extract


def page(root: Path, rel: str) -> str:
    return resiliparse_extract((root / rel).read_text(encoding="utf-8"), main_content=True).strip()


def main() -> None:
    root = Path(sys.argv[1])
    appetite = page(root, "tutorial/appetite.html")
    words = appetite.split(" ")
    near = " ".join("indeed" if i % 90 == 45 else w for i, w in enumerate(words))
    with gzip.open(BUILTIN_EVALS / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        prompt = [json.loads(line) for line in fh][2]["prompt"]
    paragraphs = page(root, "faq/windows.html").split("\n\n")
    contaminated = "\n\n".join(paragraphs[:4] + ["For example, a solution might begin like this:\n" + prompt]
                               + paragraphs[4:])
    pii = page(root, "tutorial/whatnow.html") + (
        "\n\nQuestions about this page can go to docs-team@python.org or to jane.doe@example.com, "
        "and the mirror we use runs at 93.184.216.34 for readers who cannot reach the main site."
    )
    rows = [
        {"url": "planted://tutorial/appetite", "text": appetite},
        {"url": "planted://exact-copy/appetite", "text": appetite},
        {"url": "planted://near-copy/appetite", "text": near},
        {"url": "planted://humaneval/faq-windows", "text": contaminated},
        {"url": "planted://pii/whatnow", "text": pii},
    ]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
