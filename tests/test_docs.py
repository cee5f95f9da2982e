"""Every command line the docs show is run or checked here (issue 17: docs are tested).

Collected from README.md and docs/*.md: each line of a fenced block that is marked bash/sh or not marked,
the code spans of a table column whose header names a command, the code spans of prose and tables that
start with `atom `, `torchrun `, `python`, `.venv/bin/python`, `OMP_NUM_THREADS=` or `--set `. How each is
covered:

- synopses (capitalised or <bracketed> placeholders, [optional] parts) and inline mentions of `atom STAGE`:
  the subcommand, its choices and every option they name must exist in `atom`'s real parser;
- `--set KEY=VALUE` examples: the override must apply to one of the README's example configs, loaded with
  the stage's real config model; each stage's `--set` example in its --help to that stage's config, and the
  `--profile-set` examples of `atom submit --help` to a real profile;
- the quickstart table's command column: each `atom STAGE` must be a step of `configs/quickstart.yaml`;
- every other command must be in COMMANDS, which says how it runs: fully ("run"), as a dry run with the
  real parser and config ("dry-run", with the reason), by its parser alone ("parse", with the reason), or
  not at all ("not run", with the reason). A command in the docs that COMMANDS does not name fails
  `test_every_doc_command_is_covered`, and so does an entry of COMMANDS the docs no longer show.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from atom.cli import STAGES, build_parser, load_stage
from atom.quickstart import DEFAULT_CONFIG, QuickstartConfig, StageStep
from core.config import ConfigError, load_config
from slurm.profile import load_profile

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
INLINE_STARTS = ("atom ", "torchrun ", "python ", ".venv/bin/python", "OMP_NUM_THREADS=", "--set ")
FAKE_JOB_ID = "12345"  # what `T=$(atom submit ... --parsable)` would have printed


@dataclass(frozen=True)
class Shown:
    """A command as a doc shows it."""

    file: str
    line: int
    text: str
    kind: str  # "block", "table" (a command column) or "inline"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


# ---------------------------------------------------------------------------------------------- collecting

def code_spans(text: str) -> list[tuple[int, str]]:
    """(offset, content) of each `code span`; a span may run over a line break, as in a wrapped paragraph."""
    return [(m.start(), " ".join(m.group(1).split())) for m in re.finditer(r"`([^`]+)`", text)]


def join_block_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """One entry per command: `\\` continuations joined, and indented `[...]` lines of a synopsis too."""
    out: list[tuple[int, str]] = []
    pending = False
    for number, raw in lines:
        line = re.sub(r"\s+#\s.*$", "", raw).rstrip()  # a trailing comment
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if out and (pending or (raw[:1].isspace() and line.lstrip().startswith("["))):
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip().removesuffix("\\").strip())
        else:
            out.append((number, line.strip().removesuffix("\\").strip()))
        pending = line.endswith("\\")
    return out


def collect(path: Path) -> list[Shown]:
    name = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    shown: list[Shown] = []
    block: list[tuple[int, str]] | None = None
    language = ""
    header: list[str] = []
    prose: list[tuple[int, str]] = []  # lines outside fences and tables: spans may wrap
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            if block is None:
                block, language = [], fence.group(1)
            else:
                if language in SHELL_LANGUAGES:
                    shown += [Shown(name, n, text, "block") for n, text in join_block_lines(block)]
                block = None
            continue
        if block is not None:
            block.append((number, line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not header:
                header = [c.lower() for c in cells]
                continue
            if set("".join(cells)) <= set("-: "):
                continue
            for column, cell in enumerate(cells):
                for _, span in code_spans(cell):
                    if column < len(header) and "command" in header[column]:
                        shown.append(Shown(name, number, span, "table"))
                    elif span.startswith(INLINE_STARTS):
                        shown.append(Shown(name, number, span, "inline"))
            continue
        header = []
        prose.append((number, line))
    text = "\n".join(line for _, line in prose)
    starts = [0]
    for _, line in prose:
        starts.append(starts[-1] + len(line) + 1)
    for offset, span in code_spans(text):
        if span.startswith(INLINE_STARTS) or text[max(0, offset - 9):offset] == "Command: ":
            index = max(i for i, start in enumerate(starts[:-1]) if start <= offset)
            shown.append(Shown(name, prose[index][0], span, "inline"))
    return shown


def all_shown() -> list[Shown]:
    return [item for path in DOCS for item in collect(path)]


def is_atom(text: str) -> bool:
    """`atom ...`, or `python -m atom ...` as a job script runs it."""
    return text.removeprefix("python -m ").split(" ")[0] == "atom"


def is_synopsis(text: str) -> bool:
    """A template rather than a command: placeholders such as CONFIG, <stage>, [--step N], `...`."""
    if "[" in text or "<" in text or "..." in text:
        return True
    return any(re.fullmatch(r"[A-Z][A-Z0-9_]*(\.yaml)?", word) for word in text.split())


# ------------------------------------------------------------------------------------ checking against code

def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def check_atom_usage(text: str) -> None:
    """The subcommand, its first positional's choices and every option `text` names exist in `atom`'s parser."""
    words = [w.strip("[]") for w in text.removeprefix("python -m ").split()[1:]]
    words = [w for w in words if w and w != "..."]
    if not words or words[0].startswith("-"):
        unknown = {w.split("=")[0] for w in words if w.startswith("-")} - option_strings(build_parser())
        assert not unknown, f"`{text}`: `atom` has no option {sorted(unknown)}"
        return
    subs = subparsers()
    names = list(STAGES) if words[0] in ("<stage>", "STAGE") else [words[0]]
    for name in names:
        assert name in subs, f"`{text}`: `atom` has no subcommand {name!r} (has: {', '.join(subs)})"
        sub = subs[name]
        unknown = {w.split("=")[0] for w in words[1:] if w.startswith("-")} - option_strings(sub)
        assert not unknown, f"`{text}`: `atom {name}` has no option {sorted(unknown)}"
        positional = next((a for a in sub._actions if not a.option_strings and a.dest != "help"), None)
        rest = [w for w in words[1:] if not w.startswith("-")]
        if positional is not None and positional.choices and rest and re.fullmatch(r"[a-z]+", rest[0]):
            assert rest[0] in positional.choices, f"`{text}`: `atom {name} {rest[0]}` is not one of " \
                                                  f"{sorted(positional.choices)}"


def readme_example_configs() -> list[tuple[str, str]]:
    """(stage, config) pairs of the README's stage table ("example config" column)."""
    pairs = []
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3:
            stages = [s.split()[1] for _, s in code_spans(cells[0]) if is_atom(s) and len(s.split()) > 1]
            configs = [c for _, c in code_spans(cells[2]) if c.endswith(".yaml")]
            pairs += [(stage, config) for stage in stages for config in configs]
    return pairs


def config_loads(stage: str, config: str, overrides: list[str]) -> str | None:
    """None when `config` loads as `stage`'s config (a cluster profile for submit/jobs), else the error."""
    try:
        if stage in ("submit", "jobs"):
            load_profile(str(REPO / config), overrides)
        elif stage in STAGES:
            load_config(load_stage(stage).config_cls, REPO / config, overrides)
        else:
            return f"{stage} takes no config"
    except ConfigError as exc:
        return str(exc)
    return None


def check_override(override: str) -> None:
    """`--set KEY=VALUE` applies to one of the README's example stage configs at least."""
    errors = []
    for stage, config in readme_example_configs():
        if stage in STAGES:
            error = config_loads(stage, config, [override])
            if error is None:
                return
            errors.append(f"{stage} {config}: {error}")
    raise AssertionError(f"`--set {override}` applies to no example config:\n" + "\n".join(errors))


def check_profile_override(override: str) -> None:
    error = config_loads("submit", "configs/slurm/local.yaml", [override])
    assert error is None, f"`--profile-set {override}`: {error}"


def help_examples(option: str) -> list[tuple[str, str]]:
    """(subcommand, KEY=VALUE) for each example in the --help of `option` (e.g. `--profile-set`)."""
    found = []
    for name, sub in subparsers().items():
        for action in sub._actions:
            if option in action.option_strings:
                found += [(name, ex) for ex in re.findall(r"(?<![\w-])([a-z_][\w.]*=[^\s,;)]+)", action.help or "")]
    return found


# ---------------------------------------------------------------------------------------------- running

def environment(workdir: Path) -> dict[str, str]:
    """The docs assume the venv's commands on PATH and this checkout's code."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "ATOM_JOBS_FILE": str(workdir / "jobs.jsonl")}


def shell_words(command: str) -> tuple[dict[str, str], list[str]]:
    """Leading VAR=value assignments apart; `.venv/bin/python` and `python` as this venv's Python."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words and words[0] in ("python", ".venv/bin/python"):
        words[0] = sys.executable
    return env, words


def execute(words: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**environment(cwd), **(extra_env or {})}
    proc = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"`{shlex.join(words)}` exited {proc.returncode}\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


def run_as_shown(command: str, workdir: Path) -> None:
    env, words = shell_words(command)
    execute(words, workdir, env)


def run_atom_help(command: str, workdir: Path) -> None:
    out = execute(shlex.split(command), workdir).stdout
    missing = [name for name in subparsers() if name not in out]
    assert not missing, f"`{command}` does not list {missing}"


def run_jobs_empty(command: str, workdir: Path) -> None:
    out = execute(shlex.split(command), workdir).stdout
    assert out.split()[:2] == ["JOBID", "STAGE"], out


def dry_run_quickstart(command: str, workdir: Path) -> None:
    """`make -n` shows what `make quickstart` runs; that command then runs with --dry-run."""
    recipe = execute(["make", "-n", *shlex.split(command)[1:]], REPO).stdout.splitlines()
    atom_lines = [line for line in recipe if re.search(r"(^|/)atom quickstart$", line)]
    assert atom_lines, f"`make -n quickstart` runs no `atom quickstart`:\n{recipe}"
    out = execute(["atom", "quickstart", "--dry-run"], workdir).stdout
    assert "atom release runs/quickstart/midtrain --out runs/quickstart/release" in out, out


def parse_make_test(command: str, workdir: Path) -> None:
    recipe = execute(["make", "-n", "test"], REPO).stdout
    assert re.search(r"-m pytest -q$", recipe, re.M), recipe


def parse_make_setup_keep(command: str, workdir: Path) -> None:
    """With TORCH=keep the recipe pins the venv's torch and never installs the CPU wheel."""
    recipe = execute(["make", "-n", *shlex.split(command)[1:], f"VENV={workdir / 'venv'}"], REPO).stdout
    assert "--system-site-packages" in recipe and "constraints-keep.txt" in recipe, recipe
    assert "torch==2.13.0" not in recipe and "constraints-cpu.txt -e" not in recipe, recipe


def parse_make_corpus(command: str, workdir: Path) -> None:
    """The recipe runs the Debian importer over the documentation packages (downloading them is not done)."""
    recipe = execute(["make", "-n", *shlex.split(command)[1:], f"CORPUS={workdir / 'corpus'}"], REPO).stdout
    assert "-m data_pipeline.sources.debian" in recipe and "libreoffice-help-de" in recipe, recipe
    assert "gimp-help-en" in recipe and "postgresql-doc-15" in recipe, recipe


def check_gpu_extra(command: str, workdir: Path) -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "gpu" in extras, f"`{command}`: pyproject.toml has no [gpu] extra (has {sorted(extras)})"
    assert "constraints-keep.txt" in (REPO / "Makefile").read_text()


def check_ci_stops_cluster(command: str, workdir: Path) -> None:
    assert command in (REPO / ".ci" / "run").read_text(), f"`{command}` is not what .ci/run runs"


def dry_run_submit(command: str, workdir: Path) -> None:
    """The doc's `my_cluster` is the reader's own profile: the test cluster's stands in, unchecked by sinfo."""
    inner = re.fullmatch(r"[A-Z]+=\$\((.*)\)", command)
    words = shlex.split(inner.group(1) if inner else command)
    words = [FAKE_JOB_ID if w.startswith("$") else "local" if w == "my_cluster" else w for w in words]
    out = execute([*words, "--dry-run", "--profile-set", "check_cluster=false"], workdir).stdout
    assert "#SBATCH --job-name=" in out, out


def parse_by_help(command: str, workdir: Path) -> None:
    """`--help` exits 0 and lists every option the doc gives (run from the repository root, as the docs do)."""
    env, words = shell_words(command)
    out = execute([*words, "--help"], REPO, env, timeout=120).stdout
    missing = [w for w in words if w.startswith("--") and w not in out]
    assert not missing, f"`{command}`: --help lists no {missing}"


def run_torchrun_shortened(command: str, workdir: Path) -> None:
    """Two gloo ranks on CPU, 4 steps, on a small real token dataset where the quickstart's mixture goes."""
    from tests.pretrain.fixtures import build_token_dataset

    dataset = build_token_dataset(workdir / "dataset")
    (workdir / "runs" / "quickstart").mkdir(parents=True)
    (workdir / "runs" / "quickstart" / "mix_pretrain").symlink_to(dataset)
    shorter = ["--set", "trainer.max_steps=4", "--set", "schedule.warmup_steps=2", "--set", "trainer.eval_every=2",
               "--set", "checkpoint.interval=2", "--set", "metrics.log_every=2", "--set", "data.val_sequences=4"]
    execute([*shlex.split(command), *shorter], workdir, timeout=600)
    run_dir = workdir / command.split("run.dir=")[1].split()[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["nonfinite_total"] == 0, summary
    ranks = sorted(p.name for p in (run_dir / "checkpoints" / "step_00000004").glob("rng_rank*.pt"))
    assert len(ranks) == 2, ranks  # one RNG state per rank: two processes trained


def run_local_cluster(command: str, workdir: Path) -> None:
    """After the session's cluster fixture started it, the doc's command is idempotent and cheap."""
    proc = execute(["bash", "-c", f"{command} && sinfo -h -N -o %N"], REPO, timeout=120)
    assert {"n1", "n2"} <= set(proc.stdout.split()), proc.stdout


def dry_run_eval(command: str, workdir: Path) -> None:
    """The target is the quickstart's release (absent here; tests/evaluation scores a tiny one): an empty
    directory in its place, the config from the repository, --dry-run."""
    words = shlex.split(command)
    (workdir / words[2]).mkdir(parents=True)
    out = execute([*words[:3], str(REPO / words[3]), *words[4:], "--dry-run"], workdir).stdout
    assert f"target: {words[2]}" in out and "# plan: eval would" in out, out


def check_lm_eval_command(command: str, workdir: Path) -> None:
    """The doc shows what `atom eval` prints (tests/evaluation/test_atom_eval.py runs that printed command)."""
    from release.evaluate import EvaluateConfig, lm_eval_command

    words = shlex.split(command)
    cfg = load_config(EvaluateConfig, REPO / "configs/eval/quick.yaml")
    assert lm_eval_command(Path("runs/quickstart/release"), Path(cfg.run.dir), [words[words.index("--tasks") + 1]],
                           cfg) == command
    parse_by_help(command, workdir)


@dataclass(frozen=True)
class How:
    mode: str  # "run", "dry-run", "parse", "not run"
    why: str
    check: Callable[[str, Path], None]
    marks: tuple = ()
    fixtures: tuple[str, ...] = ()  # set up before the check runs (the SLURM cluster)


BENCH = "a benchmark: minutes of CPU, and it measures speed; its own --help checks the options"
COMMANDS: dict[str, How] = {
    # README.md
    "make quickstart": How("dry-run", "the whole pipeline takes ~14 min; tests/atom/test_quickstart.py runs it "
                                      "end to end, shortened", dry_run_quickstart),
    "make test": How("parse", "it is the whole test suite, this test included; `make -n` shows its command",
                     parse_make_test),
    "python -m venv .venv && .venv/bin/pip install torch": How(
        "not run", "downloads a (CUDA) torch from the network; the venv running this test is `make setup`'s",
        lambda command, workdir: None),
    "make setup TORCH=keep": How("parse", "installs the project over the network; `make -n` shows the recipe",
                                 parse_make_setup_keep),
    ".venv/bin/pip install -c .venv/constraints-keep.txt -e '.[gpu]'": How(
        "not run", "megablocks builds CUDA kernels; checked: the [gpu] extra and the constraints file exist",
        check_gpu_extra),
    "make corpus": How("parse", "downloads ~300 MB of Debian packages; `make -n` shows the importer's command",
                       parse_make_corpus),
    "atom --help": How("run", "cheap", run_atom_help),
    "bash slurm/local_cluster.sh start": How("run", "slurm marker: needs root and the cluster",
                                             run_local_cluster, (pytest.mark.slurm,), ("slurm_cluster",)),
    'eval "$(bash slurm/local_cluster.sh env)"': How("run", "slurm marker: needs the cluster", run_local_cluster,
                                                     (pytest.mark.slurm,), ("slurm_cluster",)),
    "bash slurm/local_cluster.sh stop": How(
        "not run", "would stop the cluster the session's other slurm tests use; .ci/run runs it on exit",
        check_ci_stops_cluster),
    # docs/benchmarks.md
    ".venv/bin/python -m bench.tokenize --mb 8 --repeats 3": How("parse", BENCH, parse_by_help),
    ".venv/bin/python -m bench.moe_step": How("parse", BENCH, parse_by_help),
    ".venv/bin/python -m bench.ep": How("parse", BENCH, parse_by_help),
    ".venv/bin/python -m bench.scale": How("parse", BENCH, parse_by_help),
    ".venv/bin/python bench/curate.py --tasks 8 --workers 2": How("parse", BENCH, parse_by_help),
    ".venv/bin/python bench/curate.py --corpus corpora/large/postgresql-doc-15/files --corpus "
    "corpora/large/gimp-help-en/files --tasks 8 --workers 2": How("parse", BENCH + " (on `make corpus`'s pages)",
                                                               parse_by_help),
    "OMP_NUM_THREADS=1 .venv/bin/python -m bench.loader": How("parse", BENCH, parse_by_help),
    ".venv/bin/python -m bench.checkpoint": How("parse", BENCH, parse_by_help),
    ".venv/bin/python -m bench.eval --release runs/quickstart/release --task arc_easy:mc_5shot --limit 200": How(
        "parse", BENCH, parse_by_help),
    "python -m data_pipeline.sources.debian corpora/debian libreoffice-help-en-us --max-files 2000": How(
        "parse", "downloads packages from a Debian mirror", parse_by_help),
    # docs/evaluation.md
    "atom eval runs/quickstart/release configs/eval/quick.yaml": How(
        "dry-run", "needs the quickstart's release; tests/evaluation runs atom eval on a tiny one", dry_run_eval),
    "lm_eval --model hf --model_args pretrained=runs/quickstart/release,dtype=float32 --device cpu --batch_size 16 "
    "--include_path runs/eval/quick/lm_eval --tasks atom_arc_easy_rc_0shot --log_samples --output_path "
    "runs/eval/quick/lm_eval_out": How(
        "parse", "needs the quickstart's release; tests/evaluation/test_atom_eval.py runs the command atom eval "
        "prints on a tiny release", check_lm_eval_command),
    "atom audit runs/quickstart/release --contamination --data runs/quickstart/mix_pretrain --data "
    "runs/quickstart/mix_midtrain": How(
        "parse", "needs the quickstart's release and data; tests/evaluation/test_release_contamination.py runs it "
        "on a tiny release", parse_by_help),
    # docs/pretrain.md
    "torchrun --standalone --nproc_per_node 2 -m atom pretrain configs/quickstart/pretrain.yaml "
    "--set parallel.backend=fsdp2 --set trainer.micro_batch=4 --set run.dir=runs/quickstart/pretrain-fsdp2": How(
        "run", "2 gloo ranks on CPU, shortened to 4 steps on a small real dataset in place of the quickstart's",
        run_torchrun_shortened, (pytest.mark.distributed, pytest.mark.slow)),
    "torchrun --standalone --nproc_per_node 2 -m atom pretrain configs/quickstart/pretrain.yaml "
    "--set parallel.backend=fsdp2 --set parallel.ep=2 --set trainer.micro_batch=4 "
    "--set run.dir=runs/quickstart/pretrain-ep2": How(
        "run", "2 gloo ranks on CPU with expert parallelism, shortened like the FSDP2 command",
        run_torchrun_shortened, (pytest.mark.distributed, pytest.mark.slow)),
    "python -m bench.checkpoint": How("parse", BENCH, parse_by_help),
    # docs/slurm.md
    "python -m torch.distributed.run": How("parse", "what a job script runs (tests/slurm run it on the cluster); "
                                           "here its --help", parse_by_help),
    "atom jobs": How("run", "cheap: with an empty job registry (ATOM_JOBS_FILE)", run_jobs_empty),
    "T=$(atom submit configs/quickstart/tokens.yaml --stage tokenize --profile my_cluster --parsable)": How(
        "dry-run", "submitting needs a SLURM cluster; the dry run loads the stage config and profile",
        dry_run_submit),
    'M=$(atom submit configs/quickstart/mix_pretrain.yaml --stage mix --profile my_cluster --after "$T" '
    "--parsable)": How("dry-run", "as above", dry_run_submit),
    'atom submit configs/quickstart/pretrain.yaml --stage pretrain --profile my_cluster --after "$M"': How(
        "dry-run", "as above", dry_run_submit),
    "atom submit configs/quickstart/eval.yaml --stage eval --profile my_cluster": How(
        "dry-run", "as above; tests/slurm/test_submit_cluster.py submits an eval job to the local cluster",
        dry_run_submit),
}


def needs_entry(item: Shown) -> bool:
    """Concrete commands need a COMMANDS entry; templates, mentions, overrides and table steps are checked."""
    if item.kind == "table" or item.text.startswith("--set "):
        return False
    if is_atom(item.text) and (item.kind == "inline" or is_synopsis(item.text)):
        return False
    return True


def uncovered(shown: list[Shown]) -> list[Shown]:
    return [item for item in shown if needs_entry(item) and item.text not in COMMANDS]


# ---------------------------------------------------------------------------------------------- tests

@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A run directory for the commands: they write under it; configs and the sample corpus as in the repo."""
    for name in ("configs", "data_pipeline"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def test_every_doc_command_is_covered():
    shown = all_shown()
    missing = uncovered(shown)
    assert not missing, "commands in the docs that no test runs (add them to COMMANDS):\n" + "\n".join(
        map(str, missing))
    modes = {command: how.mode for command, how in COMMANDS.items()}
    assert set(modes.values()) <= {"run", "dry-run", "parse", "not run"}, modes
    stale = set(COMMANDS) - {item.text for item in shown}
    assert not stale, f"COMMANDS entries no doc shows any more: {sorted(stale)}"


def test_collection_sees_every_kind_of_command():
    """The collector itself: fenced, wrapped, table and inline commands all found."""
    texts = {item.text for item in all_shown()}
    assert {"make quickstart", "atom jobs", "atom --help", "atom data", "atom release RUN --out DIR",
            "--set optimizer.lr=3e-4"} <= texts
    assert any(t.startswith("atom submit CONFIG --stage STAGE") and t.endswith("[--parsable]") for t in texts)
    assert "python -m data_pipeline.sources.debian corpora/debian libreoffice-help-en-us --max-files 2000" in texts


@pytest.mark.parametrize("command", [pytest.param(c, marks=h.marks, id=c[:60]) for c, h in COMMANDS.items()])
def test_command_runs(command: str, workdir: Path, request: pytest.FixtureRequest):
    how = COMMANDS[command]
    for fixture in how.fixtures:
        request.getfixturevalue(fixture)
    how.check(command, workdir)


def test_synopses_and_mentions_match_the_parser():
    items = [i for i in all_shown() if is_atom(i.text) and not needs_entry(i) and i.kind != "table"]
    assert len(items) > 20
    for item in items:
        check_atom_usage(item.text)


def test_set_examples_in_docs_apply_to_a_config():
    overrides = [i.text.split(None, 1)[1] for i in all_shown() if i.text.startswith("--set ")]
    assert overrides
    for override in overrides:
        check_override(override)


def test_example_configs_load_with_their_stage():
    pairs = readme_example_configs()
    assert len(pairs) >= 8
    by_config: dict[str, list[str]] = {}
    for stage, config in pairs:
        by_config.setdefault(config, []).append(stage)
    for config, stages in by_config.items():
        errors = [config_loads(stage, config, []) for stage in stages]
        assert None in errors, f"README: {config} loads with none of {stages}: {errors}"


def test_quickstart_table_names_its_steps():
    """The table's "command it runs" column says exactly which commands the quickstart runs."""
    config = load_config(QuickstartConfig, DEFAULT_CONFIG)
    steps = {f"atom {step.stage}" if isinstance(step, StageStep) else
             "atom release" if hasattr(step, "release") else "atom audit" for step in config.steps}
    table = {item.text for item in collect(REPO / "README.md") if item.kind == "table"}
    assert table == steps


def test_help_profile_set_examples_apply():
    examples = help_examples("--profile-set")
    assert examples, "atom submit --help shows no --profile-set example"
    for _, override in examples:
        check_profile_override(override)


def test_help_set_examples_apply_to_their_stage():
    """Each stage's `--set` example in its --help applies to that stage's example config (the README's, or the
    quickstart's own); a stage with none loadable (longdocs, soup) to some example config."""
    examples = dict(help_examples("--set"))
    assert set(examples) == set(STAGES), f"stages whose --help shows no --set example: {set(STAGES) - set(examples)}"
    for stage, override in examples.items():
        configs = [c for s, c in readme_example_configs() if s == stage and config_loads(s, c, []) is None]
        if stage == "quickstart":
            configs.append(str(DEFAULT_CONFIG.relative_to(REPO)))
        if not configs:
            check_override(override)
            continue
        errors = [config_loads(stage, config, [override]) for config in configs]
        assert None in errors, f"atom {stage} --help: `--set {override}` fails on {configs}: {errors}"


def test_checks_catch_wrong_commands():
    """What the tests above rely on: each check fails on a wrong command."""
    with pytest.raises(AssertionError, match="trainer.lr"):
        check_override("trainer.lr=3e-4")
    with pytest.raises(AssertionError, match="--stages"):
        check_atom_usage("atom submit CONFIG --stages STAGE")
    with pytest.raises(AssertionError, match="no subcommand"):
        check_atom_usage("atom pretrian CONFIG")
    with pytest.raises(AssertionError, match="not one of"):
        check_atom_usage("atom jobs tail JOBID")
    with pytest.raises(AssertionError, match="requeue.max_requeue"):
        check_profile_override("requeue.max_requeue=5")
    new = Shown("docs/x.md", 1, "atom data configs/data/sample.yaml", "block")
    assert uncovered([new]) == [new]


@pytest.mark.slow
def test_quickstart_trains_on_what_readme_says(tmp_path: Path):
    """The README's sentences on the quickstart's data hold: per source, documents kept and mixture sources."""
    readme = " ".join((REPO / "README.md").read_text().split())
    claims = {"trained": r"It trains on (.*?)\. ", "none_kept": r"Curation keeps none of (.*?):",
              "survivors": r"The (\w+) `([\w.-]+)` [^.]*? that survive [^.]*? stay out of the mixtures"}
    found = {key: re.search(pattern, readme) for key, pattern in claims.items()}
    assert all(found.values()), f"README.md no longer says what the quickstart trains on: {found}"
    trained = {s for _, s in code_spans(found["trained"].group(1))}
    none_kept = {s for _, s in code_spans(found["none_kept"].group(1))}
    words = {"no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}

    run_dir = tmp_path / "data"
    execute(["atom", "data", "configs/quickstart/data.yaml", "--set", f"run.dir={run_dir}"], REPO, timeout=600)
    sources = json.loads((run_dir / "manifest.json").read_text())["sources"]
    mixed = set()
    for mix in ("mix_pretrain", "mix_midtrain"):
        mixed |= set(load_config(load_stage("mix").config_cls, REPO / f"configs/quickstart/{mix}.yaml").sources)

    assert mixed == trained, f"README says it trains on {sorted(trained)}; the mixtures draw on {sorted(mixed)}"
    for name in trained & set(sources):
        assert sources[name]["documents"] > 0, (name, sources[name])
    assert {n for n, s in sources.items() if s["documents"] == 0} == none_kept, sources
    count, name = found["survivors"].groups()
    assert sources[name]["documents"] == words[count] and name not in mixed, sources[name]
    assert set(sources) == (trained & set(sources)) | none_kept | {name}, "a curated source the README omits"


def test_venv_provides_the_commands_the_docs_call():
    """The docs call `atom` and `torchrun` by name: the venv provides both."""
    assert shutil.which("atom", path=str(VENV_BIN)) and shutil.which("torchrun", path=str(VENV_BIN))
