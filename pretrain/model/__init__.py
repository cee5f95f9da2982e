"""The MoE transformer: config.py (what the model is), layers.py (norm, RoPE, attention, MLP), moe.py
(router and dropless experts), transformer.py (the model), fp8.py (torchao FP8), hf_export.py
(Hugging Face format). Import the module you need; this package imports nothing on its own."""
