"""Generation backends: a local Hugging Face model directory (in-process) or an OpenAI-compatible endpoint.

Both answer the same question: for a list of `Request`s (chat messages + a seed), one completion text
each, in order. `describe()` is what every record stores about who wrote it (model path and weights
hash, or endpoint URL and model name); the API key is never recorded.

- `LocalBackend`: `AutoTokenizer`/`AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)`,
  the tokenizer's chat template, `generate()` one request at a time under `torch.manual_seed(seed)`
  (reproducible per request, whatever else runs). Meant for our own small checkpoints and tests; use an
  endpoint (vLLM on the cluster) for volume.
- `EndpointBackend`: `POST {base_url}/chat/completions` with `model`, `messages`, `max_tokens`,
  `temperature`, `top_p`, `seed` (+ `extra_body`), `concurrency` requests in flight. Connection errors,
  timeouts, 429 and 5xx are retried `retries` times with exponential backoff, then the run stops with an
  `EndpointError` naming the URL; other 4xx stop it at once with the server's message. A 200 whose body
  has no text is returned as `None` (counted and quarantined as malformed output by the caller).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.config import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")


class EndpointError(ConfigError):
    """The endpoint could not be used (unreachable after retries, or it refused the request)."""


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, str]]
    seed: int


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float

    def to_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p}


class Backend(Protocol):
    def describe(self) -> dict[str, str]: ...

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[str | None]: ...


def directory_sha256(path: Path) -> str:
    """sha256 over (name, sha256) of the model directory's files: weights, config, tokenizer."""
    from core.manifest import sha256_file

    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


class LocalBackend:
    """In-process generation with a saved Hugging Face model directory (CPU by default)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32"):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"{self.model_dir}: not a saved model directory (no config.json)")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"{self.model_dir}: tokenizer has no chat template")
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir, local_files_only=True,
                                                          dtype=getattr(torch, dtype))
        self.model = model.to(device).eval()
        self.device = device
        self.sha256 = directory_sha256(self.model_dir)
        stops = {self.tokenizer.eos_token_id}
        for token in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                stops.add(tid)
        self.stop_ids = sorted(t for t in stops if t is not None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]

    def describe(self) -> dict[str, str]:
        return {"kind": "local", "model": str(self.model_dir), "model_sha256": self.sha256, "endpoint": ""}

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[str | None]:
        torch = self.torch
        out: list[str | None] = []
        for req in requests:
            prompt = self.tokenizer.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
            enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
            torch.manual_seed(req.seed)
            sample = sampling.temperature > 0
            kwargs: dict[str, Any] = {"do_sample": sample}
            if sample:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
            with torch.no_grad():
                ids = self.model.generate(**enc, max_new_tokens=sampling.max_new_tokens, eos_token_id=self.stop_ids,
                                          pad_token_id=self.pad_id, **kwargs)[0, enc["input_ids"].shape[1]:].tolist()
            for i, tid in enumerate(ids):
                if tid in self.stop_ids:
                    ids = ids[:i]
                    break
            out.append(str(self.tokenizer.decode(ids, skip_special_tokens=False)))
        return out


class EndpointBackend:
    """An OpenAI-compatible chat-completions server (vLLM, `transformers serve`, ...)."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout_s: float = 120.0,
                 retries: int = 3, backoff_s: float = 1.0, concurrency: int = 4,
                 extra_body: dict[str, Any] | None = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.retries = retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(f"backend.api_key_env: environment variable {api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(headers=headers, timeout=timeout_s)
        self.requests_made = 0

    def describe(self) -> dict[str, str]:
        return {"kind": "endpoint", "model": self.model, "model_sha256": "", "endpoint": self.base_url}

    def _send(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                self.requests_made += 1
                resp = self.client.request(method, url, json=body)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            if resp.status_code >= 400:
                raise EndpointError(f"{url}: HTTP {resp.status_code}: {resp.text[:300]}")
            try:
                return resp.json()
            except json.JSONDecodeError:
                return None
        raise EndpointError(f"{url}: endpoint unreachable after {self.retries + 1} attempt(s): {last}")

    def check(self) -> list[str]:
        """Ask `GET {base_url}/models` (bounded retries); the model ids served, or an EndpointError."""
        data = self._send("GET", f"{self.base_url}/models")
        models = [m.get("id") for m in (data or {}).get("data", []) if isinstance(m, dict)]
        return [m for m in models if m]

    def _one(self, req: Request, sampling: Sampling) -> str | None:
        body = {"model": self.model, "messages": req.messages, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": req.seed, **self.extra_body}
        data = self._send("POST", self.url, body)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else None

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda r: self._one(r, sampling), requests))

    def close(self) -> None:
        self.client.close()
