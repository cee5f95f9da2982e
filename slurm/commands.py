"""Arguments and dispatch of `atom submit` and `atom jobs` (atom/cli.py only registers them)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parsers(subcommands: argparse._SubParsersAction, stage_names: list[str]) -> None:
    summary = "submit a stage to SLURM (rendered sbatch script kept in run.dir/slurm/)"
    sub = subcommands.add_parser("submit", help=summary, description=summary)
    sub.add_argument("config", help="the stage's YAML config")
    sub.add_argument("--stage", required=True, choices=stage_names)
    sub.add_argument("--profile", default="local", help="cluster profile: a name in configs/slurm/ or a YAML path")
    sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a stage config value (repeatable)")
    sub.add_argument("--profile-set", dest="profile_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a profile value, e.g. nodes=2 or requeue.max_requeues=5 (repeatable)")
    sub.add_argument("--nodes", type=int, help="shorthand for --profile-set nodes=N")
    sub.add_argument("--after", action="append", default=[], metavar="JOBID",
                     help="start only after this job completed successfully (afterok; repeatable)")
    sub.add_argument("--dry-run", action="store_true", help="print the sbatch script; submit and write nothing")
    sub.add_argument("--parsable", action="store_true", help="print only the job id")

    summary = "list this project's SLURM jobs; `logs JOBID` tails logs; `cancel JOBID`"
    jobs = subcommands.add_parser("jobs", help=summary, description=summary)
    jobs.add_argument("action", nargs="?", default="list", choices=["list", "logs", "cancel"])
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("-n", "--lines", type=int, default=40, help="lines per log (logs)")
    jobs.add_argument("--rank", type=int, help="only this rank's log (logs)")
    jobs.add_argument("--limit", type=int, default=20, help="most recent jobs to list (list)")


def run_submit(args: argparse.Namespace, load_stage: Callable[[str], Any], argv: list[str]) -> int:
    from core.config import ConfigError
    from slurm.submit import submit

    if args.nodes is not None:
        if args.nodes < 1:
            raise ConfigError(f"--nodes {args.nodes}: must be at least 1")
        args.profile_overrides.append(f"nodes={args.nodes}")
    config_cls = load_stage(args.stage).config_cls
    result = submit(args.stage, config_cls, args.config, args.profile, args.overrides, args.profile_overrides,
                    args.after, args.dry_run, argv)
    if args.dry_run:
        print(f"# atom submit --dry-run: would write {result.script_path} and run `sbatch` on it")
        print(result.script, end="")
    elif args.parsable:
        print(result.job_id)
    else:
        print(f"submitted job {result.job_id}; script {result.script_path}; `atom jobs logs {result.job_id}`")
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    from core.config import ConfigError
    from slurm import jobs

    if args.action == "list":
        print(jobs.list_jobs(args.limit))
        return 0
    if not args.job_id:
        raise ConfigError(f"`atom jobs {args.action}` needs a JOBID")
    print(jobs.logs(args.job_id, args.lines, args.rank) if args.action == "logs" else jobs.cancel(args.job_id))
    return 0
