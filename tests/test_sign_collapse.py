"""Regression test: 1-bit BEBR must not collapse to constant bits on weak pairs with a shared mean.

Synthetic pairs whose docs share one strong common direction (as FOLDOC's old
encoder's docs: cos 0.76 to their mean). Today's recipe (threshold at 0) drives
most bits constant and R@10 far below the untrained sign code in 60 steps; the
centered sign keeps every bit alive and improves on it.
"""

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from bebrjax import sharding
from bebrjax.config import load_config
from bebrjax.data import synthetic
from bebrjax.data.batching import batch_indices
from bebrjax.evaluators import retrieval
from bebrjax.optim import make_optimizer
from bebrjax.trainers import binarizer as B
from bebrjax.trainers.binarizer_step import make_batch, make_train_step
from bebrjax.trainers.loop import init_state


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.slow
def test_one_bit_code_keeps_its_bits_on_pairs_with_a_common_mean():
    dim, n, steps, batch = 64, 3000, 60, 256
    data = synthetic.get_data(num_pairs=n, dim=dim, noise=1.2, seed=0)
    mu = _unit(np.random.default_rng(7).standard_normal((1, dim)))
    data = dataclasses.replace(
        data,
        query=_unit(np.asarray(data.query) + 0.5 * mu),
        doc=_unit(np.asarray(data.doc) + 2.0 * mu),
    )
    config = load_config(os.path.join(ROOT, f"configs/bebr/demo.py:bits=1,m={dim},steps={steps}"))
    with config.unlocked():
        config.train.batch_size = batch
    mesh = sharding.make_mesh(0)
    model = B.build_model(config)
    tx, _ = make_optimizer(config.optim, steps)
    state = init_state(model, tx, jnp.zeros((2, dim)), config.seed, mesh)
    train_step = make_train_step(model, tx, config.loss, mesh)

    def measure(state):
        q, d = (
            B.encode(model, state, np.asarray(x), mesh, 4096).planes for x in (data.query, data.doc)
        )
        bits = np.concatenate([q, d])[:, 0] > 0
        constant = int((bits.all(0) | ~bits.any(0)).sum())
        return retrieval.code_recall(q, d, (10,), mesh=mesh)["R@10"], constant

    start, _ = measure(state)
    for step in range(steps):
        state, _ = train_step(state, make_batch(data, batch_indices(n, batch, step, config.seed)))
    end, constant = measure(state)
    assert constant == 0, f"{constant} of {dim} bits constant over the set"
    assert end >= start, f"R@10 fell from {start:.3f} to {end:.3f}"
