import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bebrjax import sharding
from bebrjax.commands import encode, heldout, search
from bebrjax.config import ConfigError
from bebrjax.data import get_data
from bebrjax.optim import make_optimizer
from bebrjax.report import METHOD_NAMES
from bebrjax.trainers import binarizer
from bebrjax.trainers.loop import init_state
from bebrjax.workdir import read_metrics, train_time


def _fit(config, workdir, **kwargs):
    data = get_data(config.data)
    config = binarizer.resolve(config, data)
    mesh = sharding.make_mesh(config.mesh.num_devices)
    return binarizer.fit(config, data, str(workdir), mesh, **kwargs)


def _losses(workdir):
    return [m["loss"] for m in read_metrics(str(workdir))]


@pytest.fixture(scope="module")
def baselines_run(tmp_path_factory):
    """(config, workdir, results) of a tiny run from random init, with both baselines.

    model.skip=False: no skip path to a good code at step 0, so the untrained
    model's recall is near chance and training has to earn its figures.
    """
    from conftest import ROOT, tiny_overrides

    from bebrjax.config import apply_overrides, load_config

    config = load_config(os.path.join(ROOT, "configs/bebr/demo.py"))
    extra = ["model.skip=false", "optim.lr=0.05", "train.checkpoint_every=40"]
    extra += ["eval.float_baseline=true", "eval.trained_hash=true"]
    apply_overrides(config, [*tiny_overrides(steps=40), *extra])
    workdir = tmp_path_factory.mktemp("baselines")
    return config, workdir, binarizer.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_training_lowers_the_loss(baselines_run):
    config, workdir, results = baselines_run
    losses = _losses(workdir)
    assert len(losses) == 40
    # Measured: 21.6 -> 13.0 over the first and last five steps.
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    # The trained codes retrieve far better than the same model at step 0 (R@10 0.39 vs 0.13).
    train_data, eval_data = binarizer.split_pairs(config, get_data(config.data))
    config = binarizer.resolve(config, train_data)
    mesh = sharding.make_mesh(config.mesh.num_devices)
    tx, _ = make_optimizer(config.optim, config.train.steps)
    model = binarizer.build_model(config)
    untrained = init_state(model, tx, jnp.zeros((2, eval_data.dim)), config.seed, mesh)
    before = binarizer.evaluate(config, untrained, eval_data, mesh)["binary"]
    after = results["retrieval"]["binary"]
    assert after["R@10"] > 2 * before["R@10"] and after["R@5"] > 2 * before["R@5"]


@pytest.mark.slow
def test_one_and_eight_devices_agree(tiny_config, tmp_path):
    assert jax.device_count() == 8
    once = "train.checkpoint_every=12"  # checkpoints are not what this compares
    one = _fit(tiny_config("mesh.num_devices=1", once), tmp_path / "one")
    eight = _fit(tiny_config("mesh.num_devices=8", once), tmp_path / "eight")
    np.testing.assert_allclose(_losses(tmp_path / "one"), _losses(tmp_path / "eight"), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(eight["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_stop_and_resume_ends_with_the_same_parameters(tiny_config, tmp_path):
    config = tiny_config("mesh.num_devices=2", steps=12)
    straight = _fit(config, tmp_path / "straight")
    assert _fit(config, tmp_path / "resumed", stop_after_steps=5) is None
    assert [m["step"] for m in read_metrics(str(tmp_path / "resumed"))][-1] == 5
    resumed = _fit(config, tmp_path / "resumed")
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")
    # The training time adds up over both calls; a call with nothing left to train adds nothing.
    _fit(config, tmp_path / "resumed")
    recorded = train_time(str(tmp_path / "resumed"))
    assert [(p["start"], p["end"]) for p in recorded["parts"]] == [(0, 5), (5, 12)]
    assert recorded["seconds"] == pytest.approx(sum(p["seconds"] for p in recorded["parts"]))
    assert all(p["seconds"] > 0 for p in recorded["parts"])


@pytest.mark.slow
def test_training_time_of_every_stage_is_recorded(binarizer_run, compatible_run):
    assert binarizer_run[1]["train"]["parts"] == train_time(str(binarizer_run[0]))["parts"]
    workdir, results = compatible_run
    assert set(results["train"]) == {"old", "independent", "new"}
    for stage, recorded in results["train"].items():
        assert recorded == train_time(str(workdir / stage)) and len(recorded["parts"]) == 1


def test_workdir_refuses_a_different_config(tiny_config, tmp_path, monkeypatch):
    fitted = []
    monkeypatch.setattr(binarizer, "fit", lambda *args, **kwargs: fitted.append(args))
    # The first run records its config and stops before any step (fit returns None).
    assert binarizer.train_and_evaluate(tiny_config(steps=2), str(tmp_path)) is None
    assert (tmp_path / "config.json").exists() and len(fitted) == 1
    with pytest.raises(ConfigError, match="differs in: optim.lr"):
        binarizer.train_and_evaluate(tiny_config("optim.lr=0.5", steps=2), str(tmp_path))
    assert len(fitted) == 1  # refused before training


def _numpy_recall(scores, items, ks):
    """Recall@k of [Q, N] scores (higher first, ties to the lower id): any doc of the item."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hit = items[order] == items[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), np.inf)
    return {f"R@{k}": float(np.mean(rank < k)) for k in ks}


@pytest.mark.slow
def test_float_baseline_and_results(baselines_run):
    config, workdir, results = baselines_run
    rows = results["retrieval"]
    assert set(rows) == {"float", "binary", "binary_symmetric", "hash", "trained_hash", "float_ft"}
    assert rows["binary"]["bits"] == 32 and rows["binary"]["bytes_per_vector"] == 8.0
    assert rows["float_ft"]["bits"] == 32 * 16
    assert (workdir / "float_baseline" / "checkpoints").is_dir()
    # The float and random-hash rows are what numpy computes on the same eval split.
    data = binarizer.split_pairs(config, get_data(config.data))[1]
    ks, items, n = tuple(config.eval.ks), data.item_ids(), len(data)
    assert results["data"]["eval_pairs"] == n
    q, d = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (data.query, data.doc))
    expected = _numpy_recall(q.astype(np.float64) @ d.astype(np.float64).T, items, ks)
    for key, value in expected.items():  # within one query: float32 near-ties may swap
        assert rows["float"][key] == pytest.approx(value, abs=1.01 / n)
    proj = np.random.default_rng(config.seed).standard_normal((data.dim, 32)).astype(np.float32)
    hq, hd = (np.where(x @ proj >= 0, 1, -1) for x in (data.query, data.doc))
    hamming = (hq[:, None, :] != hd[None]).sum(2)
    assert _numpy_recall(-hamming, items, ks) == {k: rows["hash"][k] for k in expected}
    # The fine-tuned float baseline: a recall far above chance, non-decreasing in k.
    recalls = [rows["float_ft"][f"R@{k}"] for k in ks]
    assert recalls == sorted(recalls) and recalls[-1] > 3 * max(ks) / n, recalls


@pytest.mark.slow
def test_trained_hash_end_to_end(baselines_run):
    config, workdir, results = baselines_run
    row, n = results["retrieval"]["trained_hash"], results["data"]["eval_pairs"]
    assert row["bits"] == 32 and row["bytes_per_vector"] == 4.0  # m(u+1) bits in one plane
    assert row["compression"] == 16.0
    recalls = [row[f"R@{k}"] for k in config.eval.ks]
    assert all(0 <= r <= 1 for r in recalls) and recalls == sorted(recalls)
    assert recalls[-1] > 3 * max(config.eval.ks) / n  # far above a random ranking's
    assert (workdir / "trained_hash" / "checkpoints").is_dir()
    table = (workdir / "results.md").read_text()
    assert f"| {METHOD_NAMES['trained_hash']} | 32 | 4 | 16.0x | {recalls[0]:.3f} |" in table


@pytest.mark.slow
def test_evaluation_is_the_same_with_either_scoring_kernel(tiny_config, tmp_path):
    config = binarizer.resolve(tiny_config(steps=3), get_data(tiny_config().data))
    data = get_data(config.data)
    mesh = sharding.make_mesh(1)
    state = binarizer.fit(config, data, str(tmp_path), mesh)
    results = {}
    for kernel in ("popcount", "matmul"):
        with config.unlocked():
            config.eval.kernel = kernel
        results[kernel] = binarizer.evaluate(config, state, data.subset(np.arange(200)), mesh)
    assert results["popcount"] == results["matmul"]


@pytest.mark.slow
def test_the_command_line_scores_grouped_pairs_as_the_run_does(tiny_config, tmp_path, capsys):
    config = tiny_config("eval.hash=false", steps=8)  # binarizer_run's shapes: compiled once
    with config.unlocked():
        config.data.siblings = 4  # four docs per query: every one of them is relevant
    results = binarizer.train_and_evaluate(config, str(tmp_path / "run"))
    workdir, pairs, index = str(tmp_path / "run"), str(tmp_path / "eval.npz"), str(tmp_path / "x")
    assert heldout.main(["--workdir", workdir, "--out", pairs]) == 0
    with np.load(pairs) as saved:
        assert saved["relevant"].shape == (len(saved["query"]), 4)
    assert encode.main(["--workdir", workdir, "--input", pairs, "--index", index]) == 0
    capsys.readouterr()
    argv = ["--index", index, "--workdir", workdir, "--queries", pairs, "--k", "10"]
    assert search.main([*argv, "--out", str(tmp_path / "hits.npz"), "--relevant", pairs]) == 0
    recall = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["recall"]
    binary = results["retrieval"]["binary"]
    assert recall == {k: binary[k] for k in ("R@1", "R@5", "R@10")}
