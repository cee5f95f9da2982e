"""What a checkpoint directory holds, per backend, and how model + optimizer state goes in and out of DCP.

Its own module so the engines, the layout checks, mid-training's souping and the release builder share
one definition of the on-disk formats without importing each other (no engine imports another).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from core.config import ConfigError
from pretrain.checkpoint import list_checkpoints
from pretrain.config import PretrainConfig

DCP_DIR = "dcp"  # backends none and fsdp2: torch.distributed.checkpoint, loadable on any number of ranks
DS_DIR = "deepspeed"  # backend deepspeed: DeepSpeed's own format


class TrainState(Stateful):
    """Model + optimizer as one DCP entry; (re)sharded on load to whatever layout is live."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None):
        self.model = model
        self.optimizer = optimizer
        self._live: dict[tuple[str, ...], Any] = {}  # expert tensors as the model holds them (under EP)

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            state: dict[str, Any] = {"model": get_state_dict(self.model, [])[0]}
        else:
            model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
            state = {"model": model_sd, "optim": optim_sd}
        layout = getattr(self.model, "expert_layout", None)
        if layout is not None:
            self._globalize_experts(state, layout.global_mesh)
        return state

    def _globalize_experts(self, state: dict[str, Any], mesh: Any) -> None:
        """Expert parallelism: each expert tensor (weights and their optimizer moments) under its global shape."""
        from pretrain.expert_parallel import checkpoint_view, is_expert_param

        # The dicts get_state_dict returns may be the optimizer's own: edit copies.
        state["model"] = dict(state["model"])
        places: list[tuple[tuple[str, ...], dict[str, Any]]] = [
            (("model", fqn), state["model"]) for fqn in state["model"] if is_expert_param(fqn)]
        if "optim" in state:
            state["optim"] = dict(state["optim"])
            optim_state = state["optim"]["state"] = dict(state["optim"]["state"])
            for fqn in [f for f in optim_state if is_expert_param(f)]:
                moments = optim_state[fqn] = dict(optim_state[fqn])
                places += [(("optim", fqn, key), moments) for key, value in moments.items()
                           if hasattr(value, "to_local") and value.dim() > 0]
        for path, holder in places:
            self._live[path] = holder[path[-1]]
            holder[path[-1]] = checkpoint_view(holder[path[-1]], mesh)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for path, live in self._live.items():  # loaded in place through the views: hand back the originals
            holder = state["model"] if path[0] == "model" else state["optim"]["state"][path[1]]
            holder[path[-1]] = live
        if self.optimizer is None:
            set_state_dict(self.model, [], model_state_dict=state["model"], optim_state_dict={},
                           options=StateDictOptions(strict=True))
            return
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def dcp_dir(ckpt_dir: Path) -> Path:
    """The DCP folder of a checkpoint directory (or the directory itself, when given the folder)."""
    return ckpt_dir / DCP_DIR if (ckpt_dir / DCP_DIR).is_dir() else ckpt_dir


def load_model_weights(model: nn.Module, ckpt_dir: Path, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a DCP checkpoint's weights (and the optimizer state, if one is given) into a live model, strictly."""
    dcp.load({"app": TrainState(model, optimizer)}, checkpoint_id=str(dcp_dir(ckpt_dir)))


def check_checkpoint_format(cfg: PretrainConfig) -> None:
    """Refuse a run directory (or an `init_from` checkpoint) the configured backend cannot read, before any
    training work.

    Backends none and fsdp2 share one format (DCP); DeepSpeed has its own and neither family converts the
    other's. Without this check a switch passes the config comparison on resume (`parallel` may change)
    and fails halfway through loading with a raw assertion."""
    deepspeed = cfg.parallel.backend == "deepspeed"
    ours, theirs, writer = (DS_DIR, DCP_DIR, "none or fsdp2") if deepspeed else (DCP_DIR, DS_DIR, "deepspeed")
    if cfg.init_from:
        source = Path(cfg.init_from)
        if deepspeed:
            raise ConfigError(f"init_from: starting from a checkpoint ({source}) is implemented for parallel.backend "
                              "none or fsdp2 only; train this stage with one of those")
        if (source / DS_DIR).is_dir() and not (source / DCP_DIR).is_dir():
            raise ConfigError(f"init_from: {source} was written by parallel.backend deepspeed ({DS_DIR}/), which "
                              f"parallel.backend={cfg.parallel.backend} cannot load; start from a checkpoint of "
                              "a none or fsdp2 run")
    for ckpt in list_checkpoints(Path(cfg.run.dir) / "checkpoints"):
        if (ckpt.path / theirs).is_dir() and not (ckpt.path / ours).is_dir():
            raise ConfigError(f"{ckpt.path}: written by parallel.backend {writer} ({theirs}/), which "
                              f"parallel.backend={cfg.parallel.backend} cannot resume from; resume with "
                              f"parallel.backend {writer}, or train in another run.dir")
