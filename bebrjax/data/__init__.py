"""Data: paired embeddings, loaders looked up by name, splits and batches."""

from __future__ import annotations

import dataclasses
import inspect

import ml_collections

from bebrjax.config import import_plugin
from bebrjax.data.pairs import PairedEmbeddings
from bebrjax.errors import ConfigError, DataError

__all__ = ["DataError", "PairedEmbeddings", "get_data"]


def get_data(config: ml_collections.ConfigDict) -> PairedEmbeddings:
    """Loads the data set named by `config.name` with the rest of `config` as arguments.

    `config.groups_from`, when present, is the config of another data set of
    the same pairs (another model's embeddings of them) whose `groups` these
    pairs take: one grouping, so one split, for both.

    Raises:
      DataError: when `groups_from` holds another number of pairs.
    """
    kwargs = {k: v for k, v in config.to_dict().items() if k not in ("name", "groups_from")}
    module = import_plugin("bebrjax.data", config.name, "data.name")
    try:
        inspect.signature(module.get_data).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(
            f"data.name={config.name!r} does not take the config's data keys "
            f"({', '.join(sorted(kwargs)) or 'none'}): {e}"
        ) from None
    if "groups_from" not in config:
        return module.get_data(**kwargs)
    grouped = get_data(config.groups_from)  # loaded first: only its groups are kept
    groups, source = grouped.groups, grouped.source
    del grouped
    data = module.get_data(**kwargs)
    if groups is not None and len(groups) != len(data):
        raise DataError(
            f"{data.source} has {len(data)} pairs and {source}, whose groups it takes, "
            f"{len(groups)}: row i of each must be the same pair"
        )
    return dataclasses.replace(data, groups=groups)
