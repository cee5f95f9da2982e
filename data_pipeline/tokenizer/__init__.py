"""Tokenizer training: byte-level BPE with `tokenizers`, saved so `AutoTokenizer` loads it offline."""
