"""Fixtures for the synthetic-data tests: a tiny random-init chat model saved from a config (with a BPE
tokenizer trained here by `atom tokenizer`'s code), and a live `transformers serve` on localhost.

Nothing is downloaded: the tokenizer is trained on stdlib docstrings, the model is a random
`LlamaForCausalLM` saved with `save_pretrained`, and the server runs offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.config import RunConfig
from tests.data_pipeline.tokens_fixtures import stdlib_documents, write_curated_run

VOCAB = 512
SERVER_START_TIMEOUT_S = 120


def build_tiny_model(root: Path) -> tuple[Path, Path, Path]:
    """(model dir, tokenizer dir, curated run): a random 2-layer Llama with our ChatML tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from data_pipeline.tokenizer.train import TokenizerConfig
    from data_pipeline.tokenizer.train import run as train_tokenizer

    curated = write_curated_run(root / "curated", stdlib_documents(30))
    tok_dir = train_tokenizer(TokenizerConfig(run=RunConfig(dir=str(root / "tokenizer")), input=str(curated),
                                              vocab_size=VOCAB, model_max_length=1024))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=None, eos_token_id=[tokenizer.eos_token_id, im_end],
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, im_end], pad_token_id=tokenizer.pad_token_id,
                     do_sample=True, max_new_tokens=24).save_pretrained(model_dir)
    return model_dir, tok_dir, curated


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str
    model: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def serve_cli() -> list[str]:
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        raise RuntimeError("`transformers` CLI not found: pip install 'transformers[serving]'")
    return [exe]


def launch_server(model_dir: Path, log: Path) -> Server:
    """Start `transformers serve MODEL_DIR` on a free localhost port (returns at once; see `wait_ready`)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*serve_cli(), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Server(proc, f"http://127.0.0.1:{port}/v1", str(model_dir), log)


def wait_ready(server: Server, timeout_s: float = SERVER_START_TIMEOUT_S) -> Server:
    """Poll /v1/models until it answers (bounded); stop the server and raise with its log if it does not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"transformers serve exited {server.process.returncode}:\n"
                               f"{server.log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"transformers serve did not answer within {timeout_s}s:\n"
                       f"{server.log.read_text(errors='replace')[-3000:]}")


def start_server(model_dir: Path, log: Path) -> Server:
    return wait_ready(launch_server(model_dir, log))


_CACHE: dict[str, tuple[Path, Path, Path]] = {}


def tiny_model(tmp_path_factory) -> tuple[Path, Path, Path]:
    """`build_tiny_model` once per test session (read-only for the tests)."""
    if "model" not in _CACHE:
        _CACHE["model"] = build_tiny_model(tmp_path_factory.mktemp("synth_model"))
    return _CACHE["model"]


class ScriptedBackend:
    """A stand-in model for accounting tests: answers attempt k of a problem with `script[k]` applied to the
    problem's reference trace ("correct", "wrong", "malformed", "none" for a response without text)."""

    def __init__(self, problems, script: list[str]):
        self.by_prompt = {p.prompt(): p for p in problems}
        self.script = script
        self.calls: dict[str, int] = {}
        self.requests = 0

    def describe(self) -> dict[str, str]:
        return {"kind": "scripted", "model": "scripted-test-model", "model_sha256": "", "endpoint": ""}

    def generate(self, requests, sampling):
        out = []
        for req in requests:
            self.requests += 1
            prompt = req.messages[-1]["content"]
            k = self.calls.get(prompt, 0)
            self.calls[prompt] = k + 1
            p = self.by_prompt[prompt]
            action = self.script[k % len(self.script)]
            head = p.trace().rsplit("Answer: ", 1)[0]
            out.append({"correct": p.trace(), "wrong": f"{head}Answer: {p.answer + 1}",
                        "malformed": head.replace("</think>", "I think it is right."), "none": None}[action])
        return out
