"""Data: paired embeddings, loaders looked up by name, splits and batches."""

from __future__ import annotations

import inspect

import ml_collections

from bebrjax.config import ConfigError, import_plugin
from bebrjax.data.pairs import DataError, PairedEmbeddings

__all__ = ["DataError", "PairedEmbeddings", "get_data"]


def get_data(config: ml_collections.ConfigDict) -> PairedEmbeddings:
    """Loads the data set named by `config.name` with the rest of `config` as arguments."""
    kwargs = {k: v for k, v in config.to_dict().items() if k != "name"}
    module = import_plugin("bebrjax.data", config.name, "data.name")
    try:
        inspect.signature(module.get_data).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(
            f"data.name={config.name!r} does not take the config's data keys "
            f"({', '.join(sorted(kwargs)) or 'none'}): {e}"
        ) from None
    return module.get_data(**kwargs)
