"""Data: paired embeddings, loaders looked up by name, splits and batches."""

from __future__ import annotations

import importlib

import ml_collections

from bebrjax.data.pairs import DataError, PairedEmbeddings

__all__ = ["DataError", "PairedEmbeddings", "get_data"]


def get_data(config: ml_collections.ConfigDict) -> PairedEmbeddings:
    """Loads the data set named by `config.name` with the rest of `config` as arguments."""
    kwargs = {k: v for k, v in config.to_dict().items() if k != "name"}
    module = importlib.import_module(f"bebrjax.data.{config.name}")
    return module.get_data(**kwargs)
