"""Render the sbatch script of one stage: a plain bash file a user can read, edit and resubmit by hand.

The script is a header rendered here (#SBATCH lines, the profile's environment, this job's values, the
step command as the array STEP_CMD) followed by `job_body.sh` verbatim: the logic below is plain bash in
that file, which shellcheck lints as it is. Shape of a job (every stage):

    #SBATCH lines (from the profile)          one task per node; `--signal=B:USR1@warn` to the batch shell
    profile setup lines, exported env
    trap USR1/TERM -> touch RUN_DIR/STOP       the trainer polls STOP at every step boundary, all ranks
                                               agree, checkpoint, exit 3 (EXIT_REQUEUE)
    srun ... torchrun (c10d rendezvous on the first node of the allocation) ... rank wrapper ... atom STAGE
    decide from srun's status and each rank's exit code:
        0                      -> done
        2 (a user error)       -> stop, not resubmitted
        preempted (3 / STOP)   -> `scontrol requeue` while fewer than max_requeues preemptions so far
        other failure          -> `scontrol requeue` while fewer than max_failures failures so far
    every attempt appends one line to RUN_DIR/slurm/attempts.tsv (read by `atom jobs`)

Why a STOP file and not signals to the ranks: torchrun's agent dies on SIGUSR1 (default action) and
answers SIGTERM by tearing its workers down with a 30 s grace; `scancel --signal` reaches either only
the batch shell or every process of every step. A file on the shared run directory reaches every rank
on every node the same way, and the trainer already agrees on it collectively. SIGTERM sent straight to
the ranks (preemption, `scontrol requeue`, time limit) is handled by the trainer too.

Every value that comes from the user (paths, names, env values, the submitting command line) goes through
`slurm.quoting`: `shell_quote` in the shell part (one line whatever the value), `sbatch_quote` in
`#SBATCH` lines (sbatch's own parser), `slurm_filename_pattern` where SLURM expands `%`.

`scancel --signal=USR1 JOB` without `--batch` signals every process of the job's steps, not the batch
shell: torchrun's agent is started through a shim that turns USR1 into the STOP file instead of dying,
and each rank starts with USR1 ignored until the trainer installs its own handler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.config import ConfigError
from core.exit_codes import EXIT_REQUEUE, EXIT_USER_ERROR
from slurm.profile import ClusterProfile
from slurm.quoting import sbatch_quote, shell_command_line, shell_quote, slurm_filename_pattern

TORCHRUN_STAGES = ("pretrain", "midtrain")
BODY = Path(__file__).with_name("job_body.sh")  # the part of every job script that is the same for all

# Runs each rank: its output into logs/<attempt>/rank<R>.log, its exit code into rank<R>.exit, and
# TERM/USR1 forwarded to the rank (torchrun signals the process group; srun signals every process).
RANK_WRAPPER = r"""rank=${RANK:-${SLURM_PROCID:-0}}
(trap "" USR1; exec "$@") >>"$ATOM_LOG_DIR/rank$rank.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' TERM INT
trap 'touch "$ATOM_STOP_FILE"; kill -USR1 $pid 2>/dev/null' USR1
while kill -0 $pid 2>/dev/null; do wait $pid; done
wait $pid; rc=$?
echo $rc >"$ATOM_LOG_DIR/rank$rank.exit"
exit $rc"""


# torchrun's agent dies on SIGUSR1 (default action); under this shim it writes the STOP file instead.
TORCHRUN_SHIM = """import os, signal, sys
signal.signal(signal.SIGUSR1, lambda *_: open(os.environ["ATOM_STOP_FILE"], "a").close())
from torch.distributed.run import main
sys.argv[0] = "torchrun"
main()"""


@dataclass(frozen=True)
class JobSpec:
    stage: str
    config: Path  # the frozen config the job runs (absolute)
    run_dir: Path  # absolute
    workdir: Path  # the job's working directory (relative paths in the config resolve against it)
    job_name: str


def job_name(prefix: str, stage: str, run_dir: Path) -> str:
    """`atom-pretrain-<run dir name>`, reduced to characters every SLURM tool displays plainly."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", run_dir.name).strip("_") or "run"
    return f"{prefix}-{stage}-{tail}"[:128]


def sbatch_options(profile: ClusterProfile, spec: JobSpec) -> list[str]:
    logs = spec.run_dir / "slurm" / "logs"
    opts = [f"--job-name={spec.job_name}"]
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(profile, key)
        if value:
            opts.append(f"--{key}={value}")
    opts += [f"--nodes={profile.nodes}", "--ntasks-per-node=1"]
    if profile.cpus_per_task:
        opts.append(f"--cpus-per-task={profile.cpus_per_task}")
    if profile.gpus_per_node:
        opts.append(f"--gpus-per-node={profile.gpus_per_node}")
    if profile.mem:
        opts.append(f"--mem={profile.mem}")
    if profile.exclusive:
        opts.append("--exclusive")
    opts += [f"--time={profile.time}", f"--chdir={spec.workdir}",
             f"--output={slurm_filename_pattern(str(logs))}/job-%j.out",
             "--open-mode=append", "--requeue", f"--signal=B:USR1@{profile.requeue.warn_seconds}",
             f"--comment=atom:{spec.stage}"]
    return opts + list(profile.sbatch_extra)


def _sbatch_line(option: str) -> str:
    if "=" in option and option.startswith("--"):
        key, value = option.split("=", 1)
        return f"#SBATCH {key}={sbatch_quote(value)}"
    return f"#SBATCH {sbatch_quote(option)}"


def step_command(profile: ClusterProfile, spec: JobSpec) -> str:
    """`STEP_CMD=(srun ...)`: the job step (with torchrun for training stages) as a bash array, which the
    body (`job_body.sh`) starts in the background; its words are expanded where the array is assigned."""
    q = shell_quote
    wrapper = ["/bin/bash", "-c", RANK_WRAPPER, "atom-rank"]
    atom = ['"$PY"', "-m", "atom", spec.stage, '"$CONFIG"']
    srun = ["srun", "--export=ALL", "--kill-on-bad-exit=1", f"--nodes={profile.nodes}", "--ntasks-per-node=1",
            '--output="${ATOM_LOG_DIR//%/%%}/node%n.out"']
    if spec.stage in TORCHRUN_STAGES:
        torchrun = ['"$PY"', "-c", q(TORCHRUN_SHIM, multiline=True), '--nnodes="$SLURM_JOB_NUM_NODES"',
                    f"--nproc-per-node={profile.ranks_per_node}", "--rdzv-backend=c10d",
                    '--rdzv-endpoint="$MASTER_ADDR:$RDZV_PORT"', '--rdzv-id="$SLURM_JOB_ID"', "--max-restarts=0",
                    "--no-python"]
        parts = srun + torchrun + [q(w, multiline=True) for w in wrapper] + atom
    else:
        parts = srun + [q(w, multiline=True) for w in wrapper] + atom
    return "STEP_CMD=(\n    " + "\n    ".join(_group(parts)) + "\n)"


def _group(parts: list[str]) -> list[str]:
    """Keep the wrapper's multi-line body on a line of its own so the script stays readable."""
    lines: list[str] = []
    current: list[str] = []
    for part in parts:
        if "\n" in part:
            if current:
                lines.append(" ".join(current))
            lines.append(part)
            current = []
        else:
            current.append(part)
    if current:
        lines.append(" ".join(current))
    return lines


def render(profile: ClusterProfile, spec: JobSpec, submitted_by: list[str]) -> str:
    """The whole script: a header of this job's values, then `job_body.sh` verbatim; `submitted_by` is the
    argv of the command that rendered it (kept as a comment)."""
    q = shell_quote
    r = profile.requeue
    lines = ["#!/bin/bash", f"# Rendered by: {shell_command_line(submitted_by)}",
             f"# Resubmit by hand: sbatch {q(str(spec.run_dir / 'slurm' / 'job.sbatch'))}",
             "# Single quotes are literal on purpose; the profile's setup sources files only the cluster has:",
             "# shellcheck disable=SC2016,SC1091"]
    lines += [_sbatch_line(o) for o in sbatch_options(profile, spec)]
    lines += ["", "set -uo pipefail", "", "# --- environment (profile setup) ---"]
    lines += list(profile.setup)
    lines += [f"export {k}={q(v)}" for k, v in sorted(profile.env.items()) if _env_name(k)]
    lines += [
        "",
        "# --- this job ---",
        f"PY={q(profile.python_path())}",
        f"CONFIG={q(str(spec.config))}",
        f"RUN_DIR={q(str(spec.run_dir))}",
        'SLURM_DIR="$RUN_DIR/slurm"',
        'export ATOM_STOP_FILE="$RUN_DIR/STOP"',
        f"EXPECTED_RANKS={_expected_ranks(profile, spec)}",
        f"MAX_REQUEUES={r.max_requeues}",
        f"MAX_FAILURES={r.max_failures}",
        f"EXIT_REQUEUE={EXIT_REQUEUE}",
        f"EXIT_USER_ERROR={EXIT_USER_ERROR}",
        "RESTART=${SLURM_RESTART_COUNT:-0}",
        'export ATOM_LOG_DIR="$SLURM_DIR/logs/$SLURM_JOB_ID.$RESTART"',
        'mkdir -p "$ATOM_LOG_DIR"',
        'ATTEMPTS="$SLURM_DIR/attempts.tsv"',
        "",
        *(_rendezvous(profile) if spec.stage in TORCHRUN_STAGES else []),
        step_command(profile, spec),
        "",
        f"# --- the job's logic: {BODY.name}, verbatim ---",
    ]
    return "\n".join(lines) + "\n" + BODY.read_text(encoding="utf-8")


def _expected_ranks(profile: ClusterProfile, spec: JobSpec) -> int:
    per_node = profile.ranks_per_node if spec.stage in TORCHRUN_STAGES else 1
    return profile.nodes * per_node


def _rendezvous(profile: ClusterProfile) -> list[str]:
    return [
        "# --- rendezvous on the first node of the allocation ---",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"RDZV_PORT={profile.rdzv_port or '$((20000 + SLURM_JOB_ID % 20000))'}",
        "export MASTER_ADDR RDZV_PORT",
        'echo "atom-job: job $SLURM_JOB_ID restart $RESTART on $SLURM_JOB_NODELIST,'
        ' rendezvous $MASTER_ADDR:$RDZV_PORT"',
        "",
    ]


def _env_name(name: str) -> bool:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"profile env: '{name}' is not a valid environment variable name")
    return True
