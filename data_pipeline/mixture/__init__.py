"""Data mixtures: deterministic document sequences over token datasets for a target token budget."""
