"""A small real tokenized dataset (Python stdlib docstrings) and a tiny model config for trainer tests."""

from __future__ import annotations

from pathlib import Path

from core.config import RunConfig
from data_pipeline.tokenizer.train import TokenizerConfig
from data_pipeline.tokenizer.train import run as train_tokenizer
from data_pipeline.tokens.tokenize import TokenizeConfig
from data_pipeline.tokens.tokenize import run as tokenize
from pretrain.config import DataConfig, PretrainConfig, TrainerConfig
from pretrain.model.config import MoEConfig, MoEModelConfig
from tests.data_pipeline.tokens_fixtures import stdlib_documents, write_curated_run

VOCAB = 512


def build_token_dataset(root: Path, max_modules: int = 60, shard_tokens: int = 20_000) -> Path:
    """curated run -> byte-level BPE (512) -> token dataset in several shards, all under `root`."""
    curated = write_curated_run(root / "curated", stdlib_documents(max_modules))
    tok = train_tokenizer(TokenizerConfig(run=RunConfig(dir=str(root / "tokenizer")), input=str(curated),
                                          vocab_size=VOCAB))
    return tokenize(TokenizeConfig(run=RunConfig(dir=str(root / "tokens")), input=str(curated),
                                   tokenizer=str(tok), shard_tokens=shard_tokens))


def tiny_model() -> MoEModelConfig:
    return MoEModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64,
                          max_seq_len=64, moe=MoEConfig(n_experts=4, top_k=2, expert_hidden=32))


def tiny_pretrain(data: Path, run_dir: Path, steps: int = 12, checkpoint_interval: int = 4,
                  **trainer) -> PretrainConfig:
    return PretrainConfig(
        run=RunConfig(dir=str(run_dir), seed=3), model=tiny_model(),
        data=DataConfig(path=str(data), seq_len=32, global_batch=4, val_sequences=8),
        trainer=TrainerConfig(max_steps=steps, micro_batch=2, eval_every=6, **trainer),
        checkpoint={"interval": checkpoint_interval, "keep_last": 2}, metrics={"log_every": 2, "console": False},
        optimizer={"lr": 1e-2}, schedule={"kind": "cosine", "warmup_steps": 2})
