"""The baselines trained beside the binarizer, as configs derived from its own.

  * float_baseline: the same model and recipe without the sign (the
    reference's fine-tuned float baseline);
  * trained_hash: a sign MLP to m(u+1) bits in one plane, trained with the
    same loss (the BEBR paper's hashing baseline).
Both serve their queries as codes (`query_bits` 0) at one budget.
"""

from __future__ import annotations

import copy

import ml_collections


def float_baseline_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same model and recipe with the sign removed (the fine-tuned float baseline)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.model.binarize = False
        config.query_bits, config.loss.budgets, config.loss.asymmetric = 0, False, False
    return config


def trained_hash_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The trained hash baseline: the same recipe, but a sign MLP (`hash_model`'s blocks).

    One bit plane (u = 0) as wide as the binarizer's code has bits, m(u+1),
    trained with the same loss: the BEBR paper's hashing baseline. Needs a
    resolved config (`model.code_dim` set).
    """
    config = copy.deepcopy(config)
    with config.unlocked():
        bits = config.model.code_dim * (config.model.loops + 1)
        config.model.update(code_dim=bits, loops=0, binarize=True, **config.hash_model)
        config.query_bits, config.loss.budgets, config.loss.asymmetric = 0, False, False
    return config


# The optional baselines trained beside the binarizer: eval key -> their config.
BASELINES = {"float_baseline": float_baseline_config, "trained_hash": trained_hash_config}
