"""Checkpoints that are complete or invisible.

A checkpoint is written into `step_XXXXXXXX.partial/` and renamed to `step_XXXXXXXX/` only after every
file is on disk and a `COMPLETE.json` (each file's size and sha256) is written. A crash mid-write leaves
a `.partial` directory that is never loaded; a checkpoint damaged later (a truncated file) fails its
verification on resume and the previous complete one is used instead, with a warning saying so.

Model and optimizer are written by the engine (torch.distributed.checkpoint for FSDP2 and one process,
loadable into a different number of ranks; DeepSpeed's own format for DeepSpeed); the trainer's own
state (step, tokens, data loader position) is JSON; RNG states are saved per rank.

With `async_save`, the engine copies the state to CPU memory and background threads write and hash it
while training goes on; the checkpoint is completed (COMPLETE.json, rename, retention) at the next save
or at the end of the run, on every rank at the same point. Until then it is a `.partial` directory, so a kill
while it is being written falls back to the previous checkpoint like any other crash.

`kill_point` marks the places where a kill is most likely to corrupt something; with `ATOM_KILL_AT` set the
process SIGKILLs itself at one of them, which is how the tests reproduce a kill at an exact place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import Field

from core.config import ConfigModel
from core.manifest import file_record, verify_file_record
from core.rundir import write_json

COMPLETE = "COMPLETE.json"
TRAINER_STATE = "trainer_state.json"
PARTIAL = ".partial"
# "<point>:<step>[@<rank>]", e.g. "save_unrenamed:6": the process (every rank, or only <rank>) SIGKILLs
# itself when it reaches that point.
KILL_AT = "ATOM_KILL_AT"
log = logging.getLogger("atom.checkpoint")
# One process is a supported layout, not a mistake: DCP's warning about it would print on every save.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class CheckpointConfig(ConfigModel):
    interval: int = Field(100, gt=0)  # steps between checkpoints (one is always written at the end)
    keep_last: int = Field(2, ge=1)
    keep_every: int | None = Field(None, gt=0)  # also keep every checkpoint whose step is a multiple
    verify_hashes: bool = True  # sha256 every file on resume (sizes are always checked)
    # Write in a background thread after a copy to CPU memory: training blocks for the copy only.
    async_save: bool = False


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def kill_point(point: str, step: int) -> None:
    """Die here, as by a SIGKILL from outside (no handler, no flush), if `ATOM_KILL_AT` names this point:
    crash tests then kill at an exact place (mid-save, mid-write) instead of racing a timer. Points:
    `before_step` (the trainer, before step `step` starts), `save_started` (part of the checkpoint written),
    `write_in_flight` (the model and optimizer write started, possibly in the background), `save_unrenamed`
    (COMPLETE.json written, not yet renamed) and `saved` (renamed, retention applied)."""
    where, _, rank = os.environ.get(KILL_AT, "").partition("@")
    if where == f"{point}:{step}" and rank in ("", str(_rank())):
        os.kill(os.getpid(), signal.SIGKILL)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Renamed (complete-looking) checkpoints, newest first."""
    found = []
    for path in root.glob("step_*") if root.is_dir() else []:
        if path.is_dir() and not path.name.endswith(PARTIAL) and path.name[5:].isdigit():
            found.append(Checkpoint(path, int(path.name[5:])))
    return sorted(found, key=lambda c: c.step, reverse=True)


def verify(ckpt: Checkpoint, hashes: bool = True) -> str | None:
    """None when every file listed in COMPLETE.json is present with its size (and hash), else why not."""
    marker = ckpt.path / COMPLETE
    if not marker.is_file():
        return f"{ckpt.path.name}: no {COMPLETE}"
    try:
        records = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"{ckpt.path.name}: unreadable {COMPLETE}: {exc}"
    for record in records:
        if not hashes:
            path = ckpt.path / record["path"]
            if not path.is_file() or path.stat().st_size != record["bytes"]:
                return f"{ckpt.path.name}/{record['path']}: missing or wrong size"
            continue
        problem = verify_file_record(record, ckpt.path)
        if problem:
            return f"{ckpt.path.name}/{problem}"
    return None


VOLATILE_FILES = (".metadata",)  # DCP's metadata embeds the save path and a random save id


def checkpoint_digest(path: Path) -> str:
    """sha256 over a checkpoint's file records (path, size, sha256), less the files that differ between
    identical saves: the same training state gives the same digest, wherever and whenever it was saved.
    Lineages (mid-training's parent, soups, releases) pin checkpoints by it."""
    records = json.loads((Path(path) / COMPLETE).read_text())["files"]
    kept = [r for r in records if not r["path"].endswith(VOLATILE_FILES)]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


class Checkpointer:
    """Saves and restores the full training state under `root`, with a retention policy."""

    def __init__(self, root: Path, cfg: CheckpointConfig, logger: logging.Logger = log):
        self.root = Path(root)
        self.cfg = cfg
        self.log = logger
        self._pending: tuple[Future | None, int, Path] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def save(self, step: int, write_state: Callable[[Path], Any], trainer_state: dict[str, Any],
             blocking: bool = True) -> Path:
        """`write_state(dir)` writes model and optimizer (on every rank), or starts writing them and returns
        the `Future` of the write; `trainer_state` is JSON, the same on all ranks. A write still running when
        this returns (`blocking=False`) is completed by the next `save` or `wait`."""
        self.wait()
        final = step_dir(self.root, step)
        partial = final.with_name(final.name + PARTIAL)
        if _is_main():
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier()
        # Small files first: an asynchronous write ends with a collective, so once it is done on the main
        # rank every rank's files, these included, are on disk and can be hashed in the background.
        torch.save(torch.get_rng_state(), partial / f"rng_rank{_rank():05d}.pt")
        if _is_main():
            write_json(partial / TRAINER_STATE, trainer_state)
        kill_point("save_started", step)
        written = write_state(partial)
        background = None
        if isinstance(written, Future):
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atom-checkpoint")
            background = self._executor.submit(self._finish_write, written, partial)
        kill_point("write_in_flight", step)
        self._pending = (background, step, partial)
        if blocking or background is None:
            self.wait()
        return final

    @staticmethod
    def _finish_write(write: Future, partial: Path) -> list[dict[str, Any]] | None:
        write.result()
        return _file_records(partial) if _is_main() else None

    def wait(self) -> Path | None:
        """Complete the checkpoint being written, if any (every rank calls this at the same point)."""
        if self._pending is None:
            return None
        background, step, partial = self._pending
        self._pending = None
        # a failed background write raises here, and the checkpoint stays partial
        records = background.result() if background is not None else None
        _barrier()
        final = step_dir(self.root, step)
        if _is_main():
            records = records if records is not None else _file_records(partial)
            write_json(partial / COMPLETE, {"step": step, "files": records})
            _fsync_dir(partial)
            kill_point("save_unrenamed", step)
            if final.exists():  # a re-save of the same step after a resume: replace it whole
                shutil.rmtree(final)
            os.replace(partial, final)
            _fsync_dir(self.root)
            self._apply_retention()
        _barrier()
        kill_point("saved", step)
        self.log.info(f"checkpoint step {step} -> {final}")
        return final

    def latest_valid(self, warn: Callable[[str], None] = log.warning) -> Checkpoint | None:
        """The newest checkpoint that verifies; each one skipped is reported through `warn`."""
        for ckpt in list_checkpoints(self.root):
            problem = verify(ckpt, self.cfg.verify_hashes)
            if problem is None:
                return ckpt
            warn(f"checkpoint {ckpt.path} is damaged ({problem}); falling back to an earlier one")
        return None

    def load(self, ckpt: Checkpoint, read_state: Callable[[Path], None]) -> dict[str, Any]:
        """`read_state(dir)` restores model and optimizer from `ckpt`; returns its trainer state."""
        read_state(ckpt.path)
        rng = ckpt.path / f"rng_rank{_rank():05d}.pt"
        if rng.is_file():  # absent when resuming on more ranks than saved: the model uses no randomness
            torch.set_rng_state(torch.load(rng, weights_only=True))
        return json.loads((ckpt.path / TRAINER_STATE).read_text())

    def _apply_retention(self) -> None:
        ckpts = list_checkpoints(self.root)
        keep = {c.step for c in ckpts[: self.cfg.keep_last]}
        if self.cfg.keep_every:
            keep |= {c.step for c in ckpts if c.step % self.cfg.keep_every == 0}
        for ckpt in ckpts:
            if ckpt.step not in keep:
                shutil.rmtree(ckpt.path, ignore_errors=True)
        for leftover in self.root.glob(f"step_*{PARTIAL}"):  # from runs killed mid-write
            shutil.rmtree(leftover, ignore_errors=True)


def _file_records(partial: Path) -> list[dict[str, Any]]:
    return [file_record(p, partial) for p in sorted(p for p in partial.rglob("*") if p.is_file())]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
