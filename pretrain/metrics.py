"""Training metrics: JSONL (the record), TensorBoard events, the console, and a PNG at the end.

The JSONL file is the source of truth; on resume it is cut back to the checkpoint's step (emptied on a
restart from scratch) so that a restarted run's file reads exactly like an uninterrupted one's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator

from core.config import ConfigModel


class MetricsConfig(ConfigModel):
    log_every: int = Field(10, gt=0)
    tensorboard: bool = True
    plot: bool = True
    console: bool = True
    # For MFU: FLOP/s of one device (e.g. 989e12 for an H100 in bf16), "measure" (a torch.mm timed at
    # start on the training device and dtype), or None (MFU not reported).
    peak_flops_per_device: Annotated[float, Field(gt=0)] | Literal["measure"] | None = None

    @field_validator("peak_flops_per_device", mode="before")
    @classmethod
    def _one_message(cls, value: object) -> object:
        """One error for a wrong value, instead of one per member of the union."""
        wrong_text = isinstance(value, str) and value != "measure"
        if wrong_text or (isinstance(value, int | float) and not isinstance(value, bool) and value <= 0):
            raise ValueError("must be a positive FLOP/s figure, 'measure' or null")
        return value


# Measurements of the machine rather than of the training: they differ between identical runs.
TIMING_KEYS = ("tokens_per_s", "tokens_per_s_per_rank", "mfu", "memory/")


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """FLOP/s of a square torch.mm, best of several: the ceiling this device reaches in practice."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(8):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def reproducible(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics record without its timing and memory figures: identical for identical runs."""
    return {k: v for k, v in record.items() if not k.startswith(TIMING_KEYS)}


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep only records with step <= last_step (a resumed run rewrites what came after)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg: MetricsConfig, enabled: bool = True):
        self.cfg = cfg
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.plot_path = run_dir / "metrics.png"
        self.tb_dir = run_dir / "tensorboard"
        self._tb: Any = None  # a SummaryWriter once started with tensorboard on

    def start(self, step: int, fresh: bool = False) -> None:
        """Begin logging after `step`, the resumed checkpoint's: later records from a killed run are dropped.
        `fresh` (no checkpoint, step 0): all of them are, step 0's included, which the run logs again."""
        if not self.enabled:
            return
        truncate_jsonl(self.path, -1 if fresh else step)
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=0 if fresh else step + 1)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in values.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self.cfg.console:
            shown = {k: v for k, v in values.items() if not k.startswith("moe/layer")}
            print(f"step {step:>6} | " + " | ".join(_fmt(k, v) for k, v in shown.items()), flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self.enabled and self.cfg.plot and self.path.is_file():
            plot_metrics(self.path, self.plot_path)


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def benchmark_series(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each in-loop task's primary score over steps (the metric `atom eval` reports for it: `acc` for MC
    letters, `acc_norm` for RC, `exact_match` for generation), labelled `<task> <metric>`."""
    found: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in records:
        for key, value in r.items():
            if key.startswith("eval/") and key.count("/") == 2 and isinstance(value, (int, float)):
                _, task, metric = key.split("/")
                found.setdefault(task, {}).setdefault(metric, []).append((r["step"], value))
    from core.config import ConfigError
    from evaluation.catalog import get_task
    from evaluation.runner import primary_metric

    out = {}
    for task, metrics in found.items():
        try:
            primary = primary_metric(get_task(task))
        except ConfigError:  # a user's own JSONL task: multiple choice, scored as RC
            primary = "acc_norm"
        if primary in metrics:
            out[f"{task} {primary}"] = metrics[primary]
    return out


def plot_metrics(jsonl: Path, png: Path) -> None:
    """Loss (train and validation), throughput and in-loop benchmark scores against step, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(jsonl)
    throughput = [(r["step"], r["tokens_per_s"]) for r in records if r.get("tokens_per_s")]
    benchmarks = benchmark_series(records)
    panels = 1 + bool(throughput) + bool(benchmarks)
    fig, axes = plt.subplots(1, panels, figsize=(6 + 5 * (panels - 1), 4), squeeze=False)
    ax_loss = axes[0][0]
    for key, style in (("loss", "-"), ("val/loss", "o-")):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points, strict=True), style, label=key, markersize=3)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if throughput:
        ax_tput = axes[0][1]
        ax_tput.plot(*zip(*throughput, strict=True), "-", color="tab:green")
        ax_tput.set_xlabel("step")
        ax_tput.set_ylabel("tokens / s")
        ax_tput.grid(alpha=0.3)
    if benchmarks:
        ax_bench = axes[0][panels - 1]
        for label, points in benchmarks.items():
            ax_bench.plot(*zip(*points, strict=True), "o-", label=label, markersize=3)
        ax_bench.set_xlabel("step")
        ax_bench.set_ylabel("in-loop benchmark score")
        ax_bench.legend(fontsize="small")
        ax_bench.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100, metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)
