"""`atom`: one command, a subcommand per stage.

Every stage subcommand takes a YAML config, any number of `--set dotted.key=value` overrides and
`--dry-run` (print the resolved config and the plan, touch nothing). User errors (bad config, bad
paths) print one line and exit 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from core.config import ConfigError, load_config
from core.exit_codes import EXIT_USER_ERROR
from core.stage import Stage
from slurm import commands as slurm_commands

# Messages libraries print on every run that concern no user: logger -> pattern of the message. Each is dropped
# by a filter on exactly the logger that emits it, installed before the library is imported; everything else
# those loggers say still shows.
LIBRARY_NOISE: dict[str, str] = {
    # torchao's optional C++/CUDA kernels (MX formats, CUTLASS sm90a) that do not load in this build of torch;
    # atom's FP8 is torchao.float8 through torch._scaled_mm, which uses none of them.
    "torchao": r"^Failed to load \S*torchao[/\\]_C\S*\.so: ",
    # torch deprecating register_constant() on Enum subclasses: addressed to torchao's authors, emitted on import.
    "torch.utils._pytree": r" is an Enum subclass and is now natively supported by torch\.compile ",
    # DeepSpeed, imported by accelerate/transformers, on a machine where torch sees no CUDA device (its test
    # is torch's): atom then runs on CPU anyway, and a GPU run sets DS_ACCELERATOR itself.
    "DeepSpeed": r"^Setting accelerator to CPU\. ",
}

# Stage name -> ("module:attribute" of its `Stage`, one-line help). Imported only when that
# subcommand runs, so `atom --help` stays fast and one stage's heavy imports never slow another.
STAGES: dict[str, tuple[str, str]] = {
    "data": ("data_pipeline.curate:STAGE", "curate raw text into deduplicated, decontaminated Parquet shards"),
    "quickstart": ("atom.quickstart:STAGE", "run the whole pipeline on the bundled corpus"),
    "tokenizer": ("data_pipeline.tokenizer.train:STAGE", "train a byte-level BPE tokenizer on a curated run"),
    "tokenize": ("data_pipeline.tokens.tokenize:STAGE",
                 "tokenize a curated run into token shards with a provenance table and manifest"),
    "mix": ("data_pipeline.mixture.mix:STAGE", "build a deterministic data mixture over token datasets"),
    "longdocs": ("data_pipeline.longdocs:STAGE", "select long documents of a curated run for long-context training"),
    "synth": ("data_pipeline.synthetic.stage:STAGE", "generate verified synthetic reasoning traces and rephrasings"),
    "pretrain": ("pretrain.stage:STAGE", "pretrain the MoE transformer on a tokenized dataset or mixture"),
    "midtrain": ("midtrain.stage:STAGE", "continue a pretrained checkpoint: new mix, longer context, anneal, evals"),
    "soup": ("midtrain.soup:STAGE", "average the weights of several runs of one model into one checkpoint"),
    "eval": ("release.evaluate:STAGE", "score a release or a run's checkpoint on benchmarks (ARC, MMLU, GSM8K, ...)"),
}
# Subcommands taking a positional argument before the config, and the config key it sets.
POSITIONAL_KEYS = {"eval": ("target", "release or run directory to evaluate")}
# Subcommands whose config argument may be left out.
DEFAULT_CONFIGS = {"quickstart": "atom.quickstart:DEFAULT_CONFIG"}
# The `--set` example each subcommand's help shows: a key of that stage's config (every stage has `run:`).
SET_EXAMPLES = {"quickstart": "samples=[]", "pretrain": "optimizer.lr=3e-4", "midtrain": "optimizer.lr=3e-4",
                "eval": "batch_size=8"}
DEFAULT_SET_EXAMPLE = "run.seed=1"


def load_stage(name: str) -> Stage:
    module, attr = STAGES[name][0].split(":")
    return getattr(importlib.import_module(module), attr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atom",
        description="atom: raw text -> curated data -> tokens -> pretrained and mid-trained MoE -> release.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands.required = True
    for name, (_, summary) in STAGES.items():
        sub = subcommands.add_parser(name, help=summary, description=summary)
        if name in POSITIONAL_KEYS:
            key, help_text = POSITIONAL_KEYS[name]
            sub.add_argument(key, nargs="?", help=f"{help_text} (sets `{key}`; may be left to the config)")
        add_config_arguments(sub, SET_EXAMPLES.get(name, DEFAULT_SET_EXAMPLE), optional=name in DEFAULT_CONFIGS)
    add_audit_parser(subcommands)
    add_release_parser(subcommands)
    slurm_commands.add_parsers(subcommands, list(STAGES))
    return parser


def add_audit_parser(subcommands: argparse._SubParsersAction) -> None:
    summary = "verify a curation run, token dataset, mixture or release offline: hashes, counts, provenance, licenses"
    sub = subcommands.add_parser("audit", help=summary, description=summary)
    sub.add_argument("path", help="curation run, dataset or mixture directory (or its manifest.json), "
                                  "or a release directory")
    sub.add_argument("--allow-license", dest="allow_licenses", action="append", default=None, metavar="SPDX",
                     help="a license the data may carry (repeatable); default: the list the data was built with")
    sub.add_argument("--config", help="YAML file whose allow_licenses list to use (e.g. the tokenize config)")
    sub.add_argument("--verbose", "-v", action="store_true", help="print every check, not only failures")
    sub.add_argument("--data", action="append", default=None, metavar="DIR",
                     help="release only: a dataset or mixture a stage trained on; its shards are re-hashed and "
                          "the trained tokens recomputed (repeatable)")
    sub.add_argument("--contamination", nargs="*", default=None, metavar="SET",
                     help="release only: check every trained document against these eval sets (default: all "
                          "benchmarks) instead of auditing; needs --data for each stage's data; exit 1 on overlap")


def add_release_parser(subcommands: argparse._SubParsersAction) -> None:
    summary = "package a trained run (and its lineage) as a verifiable Hugging Face-format release"
    sub = subcommands.add_parser("release", help=summary, description=summary)
    sub.add_argument("run_dir", help="pretraining or mid-training run directory")
    sub.add_argument("--out", required=True, help="release directory (new, empty, or an earlier release)")
    sub.add_argument("--step", type=int, default=None, help="checkpoint step to release (default: the newest)")
    sub.add_argument("--name", default=None, help="model name in the card (default: the run directory's name)")
    sub.add_argument("--no-contamination", action="store_true",
                     help="skip checking every trained document against the benchmarks (the card then has no "
                          "contamination table)")


def run_release(args: argparse.Namespace) -> int:
    from release.build import build_release

    out = build_release(args.run_dir, args.out, step=args.step, name=args.name,
                        check_contamination=not args.no_contamination)
    print(f"atom release: wrote {out}; verify it with `atom audit {out}`")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """Exit 0 when every check holds, 1 when any fails (each failure printed with its file)."""
    from data_pipeline.audit import allow_list_from_config
    from release.audit import audit

    if args.contamination is not None:
        from release.contamination import contamination

        found = contamination(args.path, args.data, args.contamination or None)
        print(found.render())
        return 1 if found.hits else 0
    allow = allow_list_from_config(args.config) if args.config else None
    if args.allow_licenses:
        allow = sorted(set(allow or []) | set(args.allow_licenses))
    report = audit(args.path, allow, args.data)
    print(report.render(verbose=args.verbose))
    return 0 if report.ok else 1


def add_config_arguments(parser: argparse.ArgumentParser, set_example: str, optional: bool = False) -> None:
    if optional:
        parser.add_argument("config", nargs="?", help="YAML config file (default: the bundled one)")
    else:
        parser.add_argument("config", help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a config value by dotted key, e.g. --set {set_example} (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and plan; run nothing")


def run_stage(name: str, args: argparse.Namespace) -> int:
    stage = load_stage(name)
    if args.config is None:
        module, attr = DEFAULT_CONFIGS[name].split(":")
        args.config = str(getattr(importlib.import_module(module), attr))
    overrides = list(args.overrides)
    key = POSITIONAL_KEYS.get(name, ("",))[0]
    if key and getattr(args, key) is not None:
        overrides.insert(0, f"{key}={getattr(args, key)}")
    config = load_config(stage.config_cls, args.config, overrides)
    try:
        if args.dry_run:
            steps = list(stage.plan(config))  # before printing: an invalid config prints only its error
            print(f"# atom {name}: resolved config ({args.config})")
            print(config.to_yaml(), end="")
            print(f"# plan: {name} would")
            for step in steps:
                print(f"#   - {step}")
            return 0
        stage.run(config)
    except ConfigError as exc:
        raise in_config_file(exc, args.config) from None
    return 0


def in_config_file(exc: ConfigError, path: str) -> ConfigError:
    """A stage's error about its config's values (`parent: ...`), named after the config file it came from."""
    message = str(exc)
    if path in message or str(Path(path).resolve()) in message:
        return exc
    return ConfigError(f"{path}: {message}")


class DropMatching(logging.Filter):
    """Drops the records of one logger whose message matches a pattern."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.search(record.getMessage()) is None


def silence_library_noise() -> None:
    """Install the LIBRARY_NOISE filters (once); call before the stage's imports."""
    for name, pattern in LIBRARY_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMatching) for f in logger.filters):
            logger.addFilter(DropMatching(pattern))


def main(argv: Sequence[str] | None = None) -> int:
    silence_library_noise()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "audit":
            return run_audit(args)
        if args.command == "release":
            return run_release(args)
        if args.command == "submit":
            return slurm_commands.run_submit(args, load_stage, argv)
        if args.command == "jobs":
            return slurm_commands.run_jobs(args)
        return run_stage(args.command, args)
    except ConfigError as exc:
        print(f"atom {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"atom {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
