"""Run directories: where every stage writes its resolved config, logs and manifest.

A run directory belongs to one config. Starting a stage in a directory that holds a run of a different
config is an error (a run never overwrites another run silently); starting it again with the same
config resumes or re-runs in place, which is what preempted SLURM jobs need.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from core.config import ConfigError, ConfigModel
from core.fingerprint import FINAL_RECORDS, code_changed, input_changes, run_fingerprint

CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.json"
LOG_DIR = "logs"


CONFIG_DIGEST_HEADER = "# config-sha256: "


def tree_digest(tree: Mapping[str, Any]) -> str:
    """sha256 of a resolved config tree as canonical JSON: the identity of a run."""
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_digest(config: ConfigModel) -> str:
    """sha256 of the config's canonical JSON (`tree_digest` of `config.to_dict()`)."""
    return tree_digest(config.to_dict())


def render_config_file(stage: str, tree: Mapping[str, Any]) -> str:
    """config.yaml as a run directory holds it: a comment naming the stage, the digest header, the YAML."""
    body = yaml.safe_dump(dict(tree), sort_keys=False, allow_unicode=True)
    return f"# atom {stage} config\n{CONFIG_DIGEST_HEADER}{tree_digest(tree)}\n{body}"


def recorded_config_digest(text: str) -> str | None:
    """The digest a config.yaml's header states (None when it has no header)."""
    lines = text.splitlines()
    if len(lines) > 1 and lines[1].startswith(CONFIG_DIGEST_HEADER):
        return lines[1].removeprefix(CONFIG_DIGEST_HEADER).strip()
    return None


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs are meant to be read by others
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def canonical_json(obj: Any) -> str:
    """Sorted keys, fixed indent, trailing newline: the same object always gives the same text."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Canonical JSON (see `canonical_json`), written atomically."""
    write_atomic(path, canonical_json(obj))


def recorded_inputs(run_dir: Path) -> dict[str, str] | None:
    """The input digests the run directory's inputs.json records (None for a run claimed without inputs):
    a stage's manifest carries them, so the record a release ships says which bytes the stage read."""
    path = Path(run_dir) / INPUTS_FILE
    if not path.is_file():
        return None
    inputs: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))["inputs"]
    return inputs


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config trees (added and removed keys included)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object()))


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (loggers outlive redirections)."""

    atom_console = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class RunDir:
    """A stage's output directory, claimed for one config."""

    def __init__(self, path: str | Path, stage: str):
        self.path = Path(path)
        self.stage = stage

    @classmethod
    def claim(cls, path: str | Path, stage: str, config: ConfigModel, overwrite: bool = False,
              resumable_changes: tuple[str, ...] = (),
              inputs: Mapping[str, str | Path] | None = None) -> RunDir:
        """Create (or re-enter) `path` for `config`; refuse a directory that holds another run.

        Re-entering with a config that differs only in keys under `resumable_changes` (dotted
        prefixes, e.g. "trainer.max_steps") is allowed: the previous config is kept beside the new one.
        `inputs` names what the stage reads (paths); their digests and the code's are recorded in
        inputs.json, and re-entering is refused when an input changed, or when the run had finished
        under other code (reusing it would hand on a stale result). None (a submitter claiming the
        directory for a job) records nothing.
        """
        run = cls(Path(path), stage)
        saved = run.path / CONFIG_FILE
        digest = config_digest(config)
        missing = [(name, p) for name, p in (inputs or {}).items() if not Path(p).exists()]
        if missing:  # before the directory exists: a corrected rerun must not find a half-made run
            name, p = missing[0]
            raise ConfigError(f"key '{name}': input not found: {p}")
        fingerprint = run_fingerprint(inputs) if inputs is not None else None
        if saved.exists() and not overwrite:
            text = saved.read_text(encoding="utf-8")
            same_config = recorded_config_digest(text) == digest
            if fingerprint is not None:
                run._check_fingerprint(fingerprint, reused=same_config)
            if not same_config:
                changed = changed_keys(yaml.safe_load(text) or {}, config.to_dict())
                refused = [k for k in changed if not k.startswith(tuple(resumable_changes))]
                if refused:
                    raise ConfigError(
                        f"{run.path}: run directory holds a run of a different config ({saved}): "
                        f"changed {', '.join(refused[:5])}; choose another run directory or set run.overwrite=true"
                    )
                old_digest = (recorded_config_digest(text) or "unknown")[:12]
                write_atomic(run.path / f"config.before-{old_digest}.yaml", text)
        elif not saved.exists() and run.path.exists() and any(run.path.iterdir()) and not overwrite:
            raise ConfigError(
                f"{run.path}: directory exists and is not a run directory of atom; "
                "choose another run directory or set run.overwrite=true"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / LOG_DIR).mkdir(exist_ok=True)
        write_atomic(saved, render_config_file(stage, config.to_dict()))
        if fingerprint is not None:
            write_json(run.path / INPUTS_FILE, fingerprint)
        return run

    def finished(self) -> bool:
        """A stage's final record is present (summary.json for training, manifest.json for data)."""
        return any((self.path / name).is_file() for name in FINAL_RECORDS)

    def stale_reasons(self, fingerprint: Mapping[str, Any], reused: bool = True) -> list[str]:
        """Why this run may not be re-entered with `fingerprint` (empty when it may).

        A changed input always counts; changed code counts when the run finished and would be reused
        as it is (`reused`), not when an unfinished run resumes or a finished one is continued.
        """
        recorded = self.path / INPUTS_FILE
        if not recorded.is_file():
            return []
        previous = json.loads(recorded.read_text(encoding="utf-8"))
        reasons = input_changes(previous, fingerprint)
        if reused and self.finished() and code_changed(previous, fingerprint):
            reasons.append("atom's code changed since it finished")
        return reasons

    def _check_fingerprint(self, fingerprint: Mapping[str, Any], reused: bool) -> None:
        reasons = self.stale_reasons(fingerprint, reused)
        if reasons:
            raise ConfigError(
                f"{self.path}: this run's inputs are stale ({'; '.join(reasons)}); "
                "set run.overwrite=true to redo it, or choose another run directory"
            )

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def logger(self, name: str | None = None) -> logging.Logger:
        """A logger that writes everything to logs/<stage>.log in this run directory, and warnings and
        errors to the console (stderr) as well: what needs the user's attention is not left in a file."""
        logger = logging.getLogger(f"atom.{name or self.stage}")
        log_path = (self.path / LOG_DIR / f"{self.stage}.log").resolve()
        if not any(getattr(h, "baseFilename", None) == str(log_path) for h in logger.handlers):
            handler = logging.FileHandler(log_path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
        if not any(getattr(h, "atom_console", False) for h in logger.handlers):
            console = StderrHandler()
            console.setLevel(logging.WARNING)
            console.setFormatter(logging.Formatter(f"atom {self.stage}: %(levelname)s: %(message)s"))
            logger.addHandler(console)
        logger.setLevel(logging.INFO)
        return logger
