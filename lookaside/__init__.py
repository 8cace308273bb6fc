"""Lookaside: one frozen ViT backbone, many small audio task adapters."""

__version__ = "0.1.0"
