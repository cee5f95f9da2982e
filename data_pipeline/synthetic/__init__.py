"""Synthetic data for mid-training: verifiable problems with reasoning traces, and WRAP rephrasings.

- `problems`: seeded generators (arithmetic, word problems, linear equations, unit conversion,
  sequences) with three difficulty levels, each problem with a reference trace and an exact answer;
- `verify`: parses a trace's `Answer:` line and checks it exactly (rules in its docstring);
- `backends`: a local Hugging Face model directory or an OpenAI-compatible endpoint;
- `sampling`: reference traces, or rejection sampling of model-written traces with the verifier;
- `rephrase`: WRAP-style rewriting of curated documents through the same backends;
- `stage`: `atom synth CONFIG`, writing a curated run (the contract `atom tokenize` reads).
"""
