"""Small curated runs built from real text on this machine (Python's own stdlib docstrings).

`write_curated_run` writes the curation stage's output contract (curated/*.parquet + manifest.json)
so the tokenizer, tokenize, mix and audit stages can be tested without the curation code.
Built artefacts are cached per test session in `_CACHE` so every test file shares one build.
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.manifest import file_record

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PY_VERSION = sys.version.split()[0]
LICENSE = "PSF-2.0"
COLUMNS = ("id", "text", "source", "license", "url", "source_version", "language")


def stdlib_documents(max_modules: int = 120) -> list[dict[str, str]]:
    """Module docstrings (source stdlib-module-docs) and each module's function/class docstrings joined
    (source stdlib-api-docs) of the first `max_modules` stdlib modules that have them, by name."""
    docs = []
    for path in sorted(STDLIB.glob("*.py")):
        if len({d["url"] for d in docs}) >= max_modules:
            break
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        module = path.stem
        url = f"https://docs.python.org/{PY_VERSION.rsplit('.', 1)[0]}/library/{module}.html"
        head = ast.get_docstring(tree, clean=True)
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) > 40:
                    parts.append(f"{node.name}\n{doc}")
        if not head or not parts:
            continue
        base = {"license": LICENSE, "url": url, "source_version": PY_VERSION, "language": "en"}
        docs.append({"id": f"stdlib/{module}#module", "text": head, "source": "stdlib-module-docs", **base})
        docs.append({"id": f"stdlib/{module}#api", "text": "\n\n".join(parts), "source": "stdlib-api-docs",
                     **base})
    return docs


def write_curated_run(root: Path, docs: list[dict[str, Any]], n_files: int = 2,
                      columns: tuple[str, ...] = COLUMNS) -> Path:
    """Write `docs` as a curated run (contract atom.curation/1) split over `n_files` shards."""
    (root / "curated").mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // n_files)
    outputs = []
    for i in range(n_files):
        chunk = docs[i * per:(i + 1) * per]
        table = pa.table({c: pa.array([d[c] for d in chunk], pa.string()) for c in columns})
        path = root / "curated" / f"part-{i:05d}.parquet"
        pq.write_table(table, path)
        outputs.append(file_record(path, root))
    sources = sorted({d["source"] for d in docs})
    manifest = {
        "schema": "atom.curation/1",
        "sources": {s: {"docs": sum(d["source"] == s for d in docs)} for s in sources},
        "stages": [{"name": "read", "documents_in": len(docs), "documents_kept": len(docs), "dropped": {}},
                   {"name": "quality", "documents_in": len(docs), "documents_kept": len(docs), "dropped": {}}],
        "quarantine": {"docs": 0},
        "outputs": outputs,
        "config_sha256": "0" * 64,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return root


_CACHE: dict[str, Any] = {}


def copy_docs() -> list[dict[str, Any]]:
    """The fixture documents, plus one whose text holds special-token strings (must stay plain text)."""
    if "docs" not in _CACHE:
        docs = stdlib_documents()
        docs.append({
            "id": "chat/markers", "source": "stdlib-module-docs", "license": LICENSE,
            "url": "https://docs.python.org/3/library/tokenize.html", "source_version": PY_VERSION,
            "language": "en",
            "text": "A document that quotes markers: <|endoftext|> then <|im_start|>user\n"
                    "<think>why?</think><|im_end|> and ends with trailing spaces and a tab \t \n",
        })
        _CACHE["docs"] = docs
    return [dict(d) for d in _CACHE["docs"]]


def built(tmp_path_factory) -> dict[str, Path]:
    """One curated run, tokenizer, dataset (3 shards) and mixture for the whole session (read-only!)."""
    if "built" in _CACHE:
        return _CACHE["built"]
    from core.config import RunConfig
    from data_pipeline.mixture.mix import MixConfig
    from data_pipeline.mixture.mix import run as mix
    from data_pipeline.tokenizer.train import TokenizerConfig
    from data_pipeline.tokenizer.train import run as train
    from data_pipeline.tokens.tokenize import run as tokenize

    base = tmp_path_factory.mktemp("tokens")
    curated = write_curated_run(base / "curated_run", copy_docs())
    tok = train(TokenizerConfig(run=RunConfig(dir=str(base / "tokenizer")), input=str(curated), vocab_size=1024))
    ds = tokenize(tokenize_config(base / "dataset", curated, tok))
    mx = mix(MixConfig(run=RunConfig(dir=str(base / "mixture")), datasets=[str(ds)], **MIX))
    _CACHE["built"] = {"base": base, "curated": curated, "tokenizer": tok, "dataset": ds, "mixture": mx}
    return _CACHE["built"]


MIX: dict[str, Any] = {
    "target_tokens": 300_000,
    "max_repetitions": 4.0,
    "sources": {"stdlib-api-docs": {"ratio": 0.75}, "stdlib-module-docs": {"ratio": 0.25}},
}


def tokenize_config(out: Path, curated: Path, tokenizer: Path, **kw):
    from core.config import RunConfig
    from data_pipeline.tokens.tokenize import TokenizeConfig

    return TokenizeConfig(run=RunConfig(dir=str(out)), input=str(curated), tokenizer=str(tokenizer),
                          shard_tokens=kw.pop("shard_tokens", 100_000), **kw)


def hashes(root: Path, skip: tuple[str, ...] = ("config.yaml", "logs")) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> hash), run bookkeeping excluded."""
    from core.manifest import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip}
