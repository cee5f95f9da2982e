"""Importers that build raw corpora from text available offline (see `debian`)."""
