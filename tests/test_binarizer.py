import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from bebrjax.config import apply_overrides, load_config
from bebrjax.data import get_data
from bebrjax.models.binarizer import Model, lift_init, sign_ste
from bebrjax.trainers import binarizer


def _apply(model, x, train=False):
    variables = model.init(jax.random.key(0), x)
    if train:
        out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return out
    return model.apply(variables, x)


@pytest.mark.parametrize("loops", [0, 1, 2, 3])
def test_code_values_are_exactly_the_recurrent_alphabet(loops):
    x = jax.random.normal(jax.random.key(1), (64, 12))
    out = _apply(Model(code_dim=20, loops=loops, hidden=16), x, train=True)
    alphabet = {
        sum(s * 2.0**-i for i, s in enumerate(signs))
        for signs in itertools.product([-1, 1], repeat=loops + 1)
    }
    assert out.code.shape == (64, 20)
    assert set(np.unique(np.asarray(out.code)).tolist()) <= alphabet
    planes = np.asarray(out.planes)
    assert planes.shape == (64, loops + 1, 20) and planes.dtype == np.int8
    assert set(np.unique(planes).tolist()) <= {-1, 1}
    weights = 2.0 ** -np.arange(loops + 1)
    np.testing.assert_array_equal(np.einsum("nim,i->nm", planes, weights), np.asarray(out.code))


def test_sign_maps_zero_to_plus_one():
    np.testing.assert_array_equal(sign_ste(jnp.array([-2.0, 0.0, 3.0])), [-1.0, 1.0, 1.0])


def test_straight_through_gradient_passes_only_where_abs_input_at_most_one():
    x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.7, 1.0, 1.01, 4.0])
    w = jnp.arange(1.0, 9.0)
    grad = jax.grad(lambda v: jnp.sum(sign_ste(v) * w))(x)
    np.testing.assert_array_equal(grad, np.where(np.abs(np.asarray(x)) <= 1.0, w, 0.0))


def test_gradients_reach_every_block():
    model = Model(code_dim=8, loops=2, hidden=8)
    x = jax.random.normal(jax.random.key(2), (32, 6))
    variables = model.init(jax.random.key(0), x)

    def loss(params):
        out, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out.code * jnp.arange(8.0))

    grads = jax.jit(jax.grad(loss))(variables["params"])  # compiled: 2x faster than op by op
    assert set(grads) == {"w", "b1", "r1", "b2", "r2"}
    for name, g in grads.items():
        assert any(float(jnp.abs(leaf).sum()) > 0 for leaf in jax.tree.leaves(g)), name


def test_depth_zero_is_one_linear_and_float_variant_has_no_planes():
    x = jnp.ones((4, 6))
    for skip in (True, False):
        params = Model(code_dim=5, loops=1, depth=0, skip=skip).init(jax.random.key(0), x)["params"]
        assert set(params["w"]) == {"linear"} and params["w"]["linear"]["kernel"].shape == (6, 5)
    out = _apply(
        Model(code_dim=5, loops=1, binarize=False), jax.random.normal(jax.random.key(3), (4, 6))
    )
    assert out.planes is None
    assert len(np.unique(np.asarray(out.code))) > 8


def test_untrained_skip_binarizer_is_the_recurrent_scalar_quantizer():
    x = np.array(jax.random.normal(jax.random.key(4), (32, 10)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = _apply(Model(code_dim=10, loops=1, hidden=16), jnp.asarray(x), train=True)
    s0 = np.where(x >= 0, 1.0, -1.0)
    s1 = np.where(x - s0 / np.linalg.norm(s0, axis=1, keepdims=True) >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(np.asarray(out.planes), np.stack([s0, s1], 1))


def test_lift_of_a_wider_code_is_inverted_by_the_reconstruction_block():
    wide = lift_init(None, (6, 15))
    np.testing.assert_allclose(wide @ wide.T, np.eye(6), atol=1e-5)
    np.testing.assert_array_equal(lift_init(None, (15, 6)), wide.T)
    np.testing.assert_array_equal(lift_init(None, (7, 7)), np.eye(7))


def test_reference_config_spells_out_the_authors_recipe():
    reference = load_config(os.path.join(ROOT, "configs/bebr/reference.py"))
    ours = load_config(os.path.join(ROOT, "configs/bebr/npz.py"))
    for section in ("model", "loss", "optim", "train", "hash_model", "eval", "split"):
        assert set(reference[section]) == set(ours[section]), section
    assert not reference.model.skip and reference.model.hidden == 2048
    assert reference.loss.distill_weight == 0 and reference.loss.mask_same_group
    recipe = (reference.optim.name, reference.optim.lr, reference.train.batch_size)
    assert recipe == ("sgd", 0.08, 2048)
    apply_overrides(reference, ["data.num_pairs=3000", "data.dim=8"])
    data = get_data(reference.data)
    train, held = binarizer.split_pairs(reference, data)
    assert data.groups is not None and not set(train.groups) & set(held.groups)
    config = binarizer.resolve(reference, train)
    binarizer.validate(config, len(train), len(held))
    hashing = binarizer.trained_hash_config(config).model
    assert (hashing.code_dim, hashing.loops, hashing.hidden, hashing.depth) == (16, 0, 1536, 3)
