"""Run directories keep one run's config and refuse to be overwritten by another run."""

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, ConfigModel, RunConfig
from core.rundir import CONFIG_FILE, RunDir, write_json


class Cfg(ConfigModel):
    run: RunConfig
    lr: float = 0.1


def test_claim_saves_resolved_config_and_logs(tmp_path: Path):
    cfg = Cfg(run=RunConfig(dir=str(tmp_path / "r")))
    run = RunDir.claim(cfg.run.dir, "toy", cfg)
    saved = yaml.safe_load((run.path / CONFIG_FILE).read_text())
    assert saved == cfg.to_dict()
    run.logger().info("hello")
    assert "hello" in (run.path / "logs" / "toy.log").read_text()


def test_warnings_reach_the_console_info_stays_in_the_log(tmp_path: Path, capsys):
    cfg = Cfg(run=RunConfig(dir=str(tmp_path / "r")))
    run = RunDir.claim(cfg.run.dir, "toy", cfg)
    log = run.logger()
    assert run.logger() is log and sum(getattr(h, "atom_console", False) for h in log.handlers) == 1
    log.info("progress")
    log.warning("no document passed")
    err = capsys.readouterr().err
    assert err == "atom toy: WARNING: no document passed\n"
    assert "progress" in (run.path / "logs" / "toy.log").read_text()


def test_same_config_reenters_other_config_is_refused(tmp_path: Path):
    cfg = Cfg(run=RunConfig(dir=str(tmp_path / "r")))
    RunDir.claim(cfg.run.dir, "toy", cfg)
    RunDir.claim(cfg.run.dir, "toy", cfg)  # a requeued job re-enters its own run
    other = Cfg(run=cfg.run, lr=0.2)
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        RunDir.claim(cfg.run.dir, "toy", other)
    RunDir.claim(cfg.run.dir, "toy", other, overwrite=True)


def test_foreign_directory_is_refused(tmp_path: Path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "precious.txt").write_text("x")
    cfg = Cfg(run=RunConfig(dir=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match="not a run directory"):
        RunDir.claim(cfg.run.dir, "toy", cfg)
    assert (tmp_path / "r" / "precious.txt").read_text() == "x"


def test_write_json_is_canonical(tmp_path: Path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    write_json(tmp_path / "b.json", {"a": [1, 2], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_resumable_changes_are_accepted_others_named(tmp_path: Path):
    cfg = Cfg(run=RunConfig(dir=str(tmp_path / "r")))
    RunDir.claim(cfg.run.dir, "toy", cfg)
    more = Cfg(run=RunConfig(dir=cfg.run.dir, seed=5), lr=0.1)
    with pytest.raises(ConfigError, match=r"changed run.seed"):
        RunDir.claim(cfg.run.dir, "toy", more, resumable_changes=("lr",))
    RunDir.claim(cfg.run.dir, "toy", Cfg(run=cfg.run, lr=0.3), resumable_changes=("lr",))
    assert yaml.safe_load((tmp_path / "r" / CONFIG_FILE).read_text())["lr"] == 0.3
    assert list((tmp_path / "r").glob("config.before-*.yaml"))
