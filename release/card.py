"""The model card (README.md), a pure function of release.json: `atom audit` regenerates and compares it."""

from __future__ import annotations

import json
from typing import Any

from release.manifest import ContaminationSummary, InLoopBenchmarks, ModelInfo, Release, Stage


def _n(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_n(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [kv for k in sorted(tree) for kv in _flatten(tree[k], f"{prefix}{k}.")]
    return [(prefix.rstrip("."), json.dumps(tree) if isinstance(tree, (list, dict)) else tree)]


# the card's model_type tag; every other architecture keeps the tag earlier cards have (audit re-renders them)
MODEL_TYPE_TAGS = {"Dots1ForCausalLM": "dots1"}


def _router(moe: dict[str, Any]) -> str:
    """How the router scores experts (releases from before `score_func` existed are softmax)."""
    scoring = ("sigmoid" if moe.get("score_func") == "sigmoid"
               else f"softmax {moe['softmax_order'].replace('_', ' ')}")
    return f"{scoring}, renormalised {moe['normalize_weights']}"


def _architecture(model: ModelInfo) -> list[str]:
    c = model.config
    moe = c.get("moe")
    rows = [["layers", c["n_layers"]], ["d_model", c["d_model"]],
            ["attention heads / KV heads", f"{c['n_heads']} / {c['n_kv_heads'] or c['n_heads']}"],
            ["head dim", c["head_dim"] or c["d_model"] // c["n_heads"]], ["vocabulary", c["vocab_size"]],
            ["max sequence length", c["max_seq_len"]],
            ["RoPE", f"theta {c['rope']['theta']:g}, scaling {c['rope']['scaling']}"],
            ["QK-norm / tied embeddings", f"{c['qk_norm']} / {c['tie_embeddings']}"]]
    if moe:
        rows += [["experts (top-k)", f"{moe['n_experts']} (top-{moe['top_k']}), hidden {moe['expert_hidden']}"],
                 ["dense layers first", moe["first_k_dense"]],
                 ["router", _router(moe)]]
    else:
        rows += [["MLP hidden (dense)", c["mlp_hidden"]]]
    rows += [["parameters (total)", model.params_total], ["parameters (active per token)", model.params_active],
             ["training FLOPs per token", model.flops_per_token]]
    return _table(["", ""], rows)


def _data(stage: Stage) -> list[str]:
    data = stage.data
    lines = [f"Stream: `{data.schema_}`, {_n(data.n_tokens)} tokens in {_n(data.n_docs)} documents, "
             f"manifest sha256 `{data.manifest_sha256}` (copied to `{data.dir}/`). "
             f"Allow-list the data was built under: {', '.join(data.allow_licenses or ['none recorded'])}.",
             ""]
    trained = stage.trained_documents.by_source
    rows = []
    for source, entry in data.sources.items():
        got = trained.get(source)
        rows.append([source, ", ".join(f"{k} ({_n(v)})" for k, v in sorted((entry.licenses or {}).items())),
                     entry.docs, entry.tokens, got.docs if got else 0,
                     ", ".join(f"{k or '(none)'} ({_n(v)})" for k, v in (got.licenses if got else {}).items())])
    lines += _table(["source", "licenses (documents)", "documents", "tokens", "documents trained on",
                     "their licenses"], rows)
    return lines


def render_card(release: Release) -> str:
    model, stages = release.model, release.stages
    licenses = sorted({lic for s in stages for e in s.trained_documents.by_source.values() for lic in e.licenses})
    out = ["---", "library_name: transformers", "pipeline_tag: text-generation",
           f"tags: [atom, moe, {MODEL_TYPE_TAGS.get(model.architecture, 'qwen3_moe')}]",
           f"datasets_licenses: [{', '.join(licenses)}]", "---", "", f"# {release.name}", "",
           f"A {_n(model.params_total)}-parameter mixture-of-experts language model "
           f"({_n(model.params_active)} active per token), trained by the atom pipeline in "
           f"{len(stages)} stage(s) ({' -> '.join(s.kind for s in stages)}) on "
           f"{_n(release.tokens_total)} tokens. Weights are `{model.architecture}` safetensors "
           "(fp32, as trained), loadable with `transformers.AutoModelForCausalLM.from_pretrained(this_dir)`.",
           "", "## Architecture", ""]
    out += _architecture(model)
    out += ["## Training budget", ""]
    out += _table(["stage", "kind", "steps", "global batch", "sequence length", "tokens", "epochs over stream",
                   "seed", "checkpoint (COMPLETE.json sha256)"],
                  [[s.index, s.kind, s.step, s.global_batch, s.seq_len, s.tokens, s.epochs, s.seed,
                    f"`{s.checkpoint.path}` `{(s.checkpoint.content_sha256 or '')[:16]}`"] for s in stages])
    out += [f"Total: {_n(release.steps_total)} steps, {_n(release.tokens_total)} tokens. The released weights "
            f"are stage {release.weights.stage} at step {release.weights.step}.", ""]
    out += ["## Data", ""]
    for s in stages:
        out += [f"### Stage {s.index} ({s.kind})", ""] + _data(s)
    out += _evaluation(stages)
    if release.contamination is not None:
        out += _contamination(release.contamination)
    if release.has_plot:
        out += ["![loss and throughput](metrics.png)", "",
                "Loss and throughput of the released stage ([metrics.png](metrics.png)); each stage's plot and "
                "metrics are in `lineage/NN-KIND/`.", ""]
    out += ["## Generation", "", "`generation_config.json`: " + ", ".join(
        f"{k}={v}" for k, v in sorted(release.generation.items())) + ".", ""]
    out += _provenance(release)
    return "\n".join(out)


def _benchmarks(stage: Stage, scores: InLoopBenchmarks) -> list[str]:
    rows = [[t.task, t.eval_set, t.instances if t.instances is not None else "-", t.primary_metric or "-",
             t.metrics.get(t.primary_metric, "-") if t.primary_metric else "-",
             t.chance if t.chance is not None else "-"] for t in scores.tasks]
    return ([f"Stage {stage.index} ({stage.kind}), benchmarks in-loop at step {scores.step} (the first "
             "`instances` of each task; `atom eval` scores more, see docs/evaluation.md):", ""]
            + _table(["task", "eval set", "instances", "metric", "score", "chance"], rows))


def _contamination(summary: ContaminationSummary) -> list[str]:
    newest = summary.newest_source
    if newest is None:
        data = "No trained source records when it was published, so no eval set can be said to postdate the data."
    else:
        entry = summary.sources[newest]
        data = (f"The newest source of the training data is `{newest}` version `{entry.version}`, published "
                f"{entry.released}; an eval set published no later than that may have been in the data's "
                "origins, so only sets published after it are contamination-free by construction.")
    generated = [name for name, e in summary.sources.items() if e.generated]
    undated = [name for name, e in summary.sources.items() if not e.generated and not e.released]
    if generated:
        data += f" Generated by atom (no crawled text): {', '.join(f'`{n}`' for n in generated)}."
    if undated:
        data += f" Sources that record no date: {', '.join(f'`{n}`' for n in undated)}."
    docs = ", ".join(f"stage {k}: {_n(v)}" for k, v in summary.trained_documents.items())
    rows = [[name, e.published, {True: "yes", False: "no", None: "unknown"}[e.predates_data], e.instances,
             e.overlapping, e.documents] for name, e in summary.eval_sets.items()]
    overlapping = sum(e.overlapping for e in summary.eval_sets.values())
    verdict = ("No trained document shares an n-gram with any of these eval sets." if not overlapping else
               f"{_n(overlapping)} instances overlap trained documents; `atom audit . --contamination --data "
               "DATASET_DIR` names each document, its source and license and the steps that trained on it.")
    return (["## Contamination", "", data, "",
             f"Every trained document ({docs}) checked against each eval set's instances (questions, passages "
             f"and answers) as word {summary.ngram}-grams at release time. {verdict}", ""]
            + _table(["eval set", "published", "predates the data", "instances", "overlapping instances",
                      "trained documents overlapping"], rows))


def _evaluation(stages: list[Stage]) -> list[str]:
    out = ["## Evaluation", ""]
    for s in stages:
        if s.benchmarks is not None:
            out += _benchmarks(s, s.benchmarks)
        rows = [[k, v] for k, v in _flatten(s.evals or {})] + [[k, v] for k, v in s.final_metrics.items()]
        if rows:
            out += [f"Stage {s.index} ({s.kind}), last logged values and `evals.json`:", ""]
            out += _table(["metric", "value"], rows)
    if len(out) == 2:
        out += ["No evaluation results were recorded for this run.", ""]
    return out


def _provenance(release: Release) -> list[str]:
    cv = release.code_version
    return ["## Provenance and verification", "",
            f"Code: commit `{cv.commit}`{' (working tree dirty)' if cv.dirty else ''}. Packages: "
            + ", ".join(f"{k} {v}" for k, v in sorted(release.packages.items()) if v) + ".", "",
            "Each `lineage/NN-KIND/` holds that stage's resolved `config.yaml`, its training manifest "
            "`train_tokens.jsonl` (which windows of the data stream every step read), `checkpoints.json`, "
            "metrics, and under `data/` the data manifest(s) and provenance table(s). Token shards are not "
            "copied: the data manifests pin every shard by sha256, and the training manifest pins the data "
            "manifest. To verify this release offline:", "",
            "```", "sha256sum -c SHA256SUMS        # every file", "atom audit .                   # checksums, "
            "manifests, token counts, licenses, weights load", "atom audit . --data DATASET_DIR   # also re-hash the "
            "shards and recompute the trained tokens' sha256", "```", "",
            "Trained-token digests (sha256 over each step's windows, uint32 little-endian): "
            + "; ".join(f"stage {s.index} `{s.trained_tokens_sha256}`" for s in release.stages) + ".", ""]
