"""Releases: a trained run (and its lineage) as a self-contained, verifiable directory; see build.py."""
