"""The held-out pairs a binarizer run evaluated on, as files the other commands read.

    write_pairs("eval.npz", held_out(W))    # what `bebrjax heldout` writes

The file holds `query` and `doc` (float32 [N, d], the eval split's
embeddings as the run's data loader gave them), `relevant` (int64 [N]:
query i's relevant doc is doc i; for pairs that share items, int64 [N, R]:
every doc of query i's item, padded with -1, as results.json scores them)
and, when the data has them, `labels`. With them, `bebrjax encode` of `doc`
and `bebrjax search` of `query` with `--relevant eval.npz:relevant`
reproduce the binary row of the run's results.json from the command line.
"""

from __future__ import annotations

import numpy as np

from bebrjax import workdir as wd
from bebrjax.data import PairedEmbeddings, get_data
from bebrjax.errors import LoadError
from bebrjax.evaluators.retrieval import relevant_docs
from bebrjax.inference import read_config
from bebrjax.trainers.binarizer import split_pairs


def held_out(workdir: str) -> PairedEmbeddings:
    """The eval pairs of the binarizer run in `workdir` (its data and split, regenerated).

    Raises:
      LoadError: when `workdir` holds no binarizer run.
      DataError: when its data cannot be read any more.
    """
    config = read_config(workdir)
    if config.get("trainer") != "binarizer":
        raise LoadError(f"{workdir}: not a binarizer run (trainer {config.get('trainer')!r})")
    _, eval_pairs = split_pairs(config, get_data(config.data))
    return eval_pairs


def write_pairs(path: str, pairs: PairedEmbeddings, overwrite: bool = False) -> None:
    """Writes `query`, `doc`, `relevant` (and `labels`) to the .npz `path`, whole.

    Raises:
      OutputExistsError: when `path` exists and `overwrite` is False.
    """
    relevant = np.arange(len(pairs)) if pairs.groups is None else relevant_docs(pairs.groups)
    arrays = {"query": pairs.query, "doc": pairs.doc, "relevant": relevant}
    if pairs.labels is not None:
        arrays["labels"] = pairs.labels
    wd.write_npz(path, arrays, overwrite)
