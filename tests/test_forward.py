"""Units of DMU and BiCT: discriminativeness weights, the adapter psi, gallery upgrades."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bebrjax import sharding
from bebrjax.data import DataError
from bebrjax.data.upgrade_splits import sequence_split, universal_split
from bebrjax.evaluators.compatibility import fit_to
from bebrjax.losses import compat
from bebrjax.models.adapter import Adapter, WithAdapter, split_variables, upgrade_gallery
from bebrjax.models.embedder import Model
from bebrjax.trainers.sequential import StoredGallery

RNG = np.random.default_rng(0)


def _unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


OLD = _unit(RNG.normal(size=(12, 6)))
W = _unit(RNG.normal(size=(5, 6)))
Y = RNG.integers(0, 5, 12)


@pytest.mark.parametrize("measure", compat.MEASURES)
def test_discriminativeness_against_numpy(measure):
    z = 16.0 * OLD @ W.T
    p = _softmax(z.astype(np.float64))
    if measure == "probability":
        want = p[np.arange(12), Y]
    elif measure == "entropy":
        want = 1 + np.sum(p * np.log(p), axis=1) / np.log(5)
    else:
        rival = np.where(np.eye(5, dtype=bool)[Y], -np.inf, z).max(axis=1)
        want = 1 / (1 + np.exp(-(z[np.arange(12), Y] - rival)))
    got = compat.discriminativeness(
        jnp.asarray(OLD), jnp.asarray(Y), jnp.asarray(W), measure=measure
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
    assert np.all((np.asarray(got) >= 0) & (np.asarray(got) <= 1))


def test_darwinian_weights_range_normalization_and_no_gradient():
    score = jnp.asarray(RNG.uniform(0, 1, 32), jnp.float32)
    for emphasis in (0.0, 0.5, 1.0):
        w, v = compat.darwinian_weights(score, emphasis)
        assert float(jnp.mean(w)) == pytest.approx(1.0, abs=1e-4)
        assert float(jnp.mean(v)) == pytest.approx(1.0, abs=1e-4)
        assert np.all(np.asarray(w) >= 0) and np.all(np.asarray(v) >= 0)
        # the better the old feature, the more backward weight and the less forward weight
        order = np.argsort(np.asarray(score))
        assert np.all(np.diff(np.asarray(w)[order]) >= 0)
        assert np.all(np.diff(np.asarray(v)[order]) <= 1e-6)
    np.testing.assert_allclose(compat.darwinian_weights(score, 0.0)[1], 1.0, rtol=1e-5)

    def weighted(old):
        d = compat.discriminativeness(old, jnp.asarray(Y), jnp.asarray(W))
        w, v = compat.darwinian_weights(d, 0.5)
        return jnp.sum(w) + jnp.sum(v * old[:, 0])

    grad = jax.grad(weighted)(jnp.asarray(OLD))
    # only the direct use of `old` has a gradient: none flows through the weights
    np.testing.assert_allclose(grad[:, 1:], 0.0)


def test_weighted_losses_are_weighted_means():
    new = jnp.asarray(_unit(RNG.normal(size=(12, 8))))
    weights = jnp.asarray(RNG.uniform(0, 2, 12), jnp.float32)
    per_row = jnp.stack(
        [compat.influence_loss(new[i : i + 1], jnp.asarray(Y[i : i + 1]), W) for i in range(12)]
    )
    got = compat.influence_loss(new, jnp.asarray(Y), W, weights=weights)
    assert float(got) == pytest.approx(float(jnp.mean(weights * per_row)), rel=1e-5)
    ones = jnp.ones(12)
    for loss in (
        lambda w: compat.influence_loss(new, jnp.asarray(Y), W, weights=w),
        lambda w: compat.contrastive_loss(new, jnp.asarray(OLD), jnp.asarray(Y), weights=w),
        lambda w: compat.l2_loss(new, jnp.asarray(OLD), weights=w),
    ):
        assert float(loss(ones)) == pytest.approx(float(loss(None)), rel=1e-6)


def test_forward_loss_trains_only_psi():
    adapted, new = (jnp.asarray(_unit(RNG.normal(size=(12, 6)))) for _ in range(2))
    grads = jax.grad(
        lambda a, n, w: compat.forward_loss(a, n, jnp.asarray(Y), w, l2=1.0), argnums=(0, 1, 2)
    )(adapted, new, jnp.asarray(W))
    assert float(jnp.abs(grads[0]).sum()) > 0
    assert float(jnp.abs(grads[1]).sum()) == 0 and float(jnp.abs(grads[2]).sum()) == 0


@pytest.mark.parametrize(
    "width", [6, pytest.param(10, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow)]
)
def test_adapter_starts_as_the_width_fitting(width):
    adapter = Adapter(width, blocks=2)
    variables = adapter.init(jax.random.key(3), OLD)
    np.testing.assert_allclose(adapter.apply(variables, OLD), fit_to(OLD, width), atol=1e-6)


def test_gallery_upgrade_in_batches_equals_the_whole_array(tmp_path):
    adapter = Adapter(10, hidden=16)
    variables = adapter.init(jax.random.key(0), OLD)
    # move every parameter and statistic off its initial value, so psi is not the identity
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda a: a + 0.3 * np.abs(rng.normal(size=a.shape)), variables)
    gallery = _unit(RNG.normal(size=(45, 6)))
    whole = np.asarray(adapter.apply(variables, gallery))
    assert np.abs(whole - fit_to(gallery, 10)).max() > 0.1
    mesh = sharding.make_mesh(0)
    batched = upgrade_gallery(adapter, variables, gallery, mesh, batch_size=8)
    assert batched.shape == (45, 10)
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "gallery.npy", gallery)
    stored = np.load(tmp_path / "gallery.npy", mmap_mode="r")
    memmapped = upgrade_gallery(adapter, variables, stored, sharding.make_mesh(1), 7)
    np.testing.assert_allclose(memmapped, whole, rtol=1e-5, atol=1e-6)


def test_with_adapter_splits_into_a_plain_model_and_psi():
    model = Model(backbone_args={"widths": (16,)}, embedding_dim=8, num_classes=5)
    joint = WithAdapter(model, Adapter(8), old_dim=6)
    x = RNG.normal(size=(4, 7)).astype(np.float32)
    variables = joint.init(jax.random.key(0), x)
    model_vars, adapter_vars = split_variables(variables)
    out = joint.apply(variables, x, old=OLD[:4])
    np.testing.assert_allclose(model.apply(model_vars, x)["embedding"], out["embedding"])
    np.testing.assert_allclose(Adapter(8).apply(adapter_vars, OLD[:4]), out["adapted"])
    assert "adapted" not in joint.apply(variables, x)


def test_stored_gallery_versions_compose_in_order():
    g = StoredGallery(np.ones((2, 3)), "phi1")
    g = g.upgraded(lambda a: a + 1, 2).upgraded(lambda a: a * 10, 3)
    assert g.version == "psi3(psi2(phi1))"
    np.testing.assert_array_equal(g.embeddings, np.full((2, 3), 20.0))


def test_sequence_split_nests_and_matches_the_universal_split():
    y = np.repeat(np.arange(20), 10)
    for kind in ("extended_class", "extended_data"):
        train, query, gallery = sequence_split(y, kind, (0.3, 0.6, 1.0), seed=4)
        one = universal_split(y, kind, old_ratio=0.3, seed=4)
        np.testing.assert_array_equal(train[0], one.old)
        np.testing.assert_array_equal(train[2], one.new)
        np.testing.assert_array_equal(query, one.query)
        np.testing.assert_array_equal(gallery, one.gallery)
        assert all(set(a) < set(b) for a, b in zip(train[:-1], train[1:], strict=True))
    with pytest.raises(DataError, match="cannot grow"):
        sequence_split(y, "open_class", (0.3, 1.0))
    with pytest.raises(DataError, match="must increase"):
        sequence_split(y, "extended_class", (0.6, 0.3))
