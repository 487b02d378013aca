"""Compatible binary codes: the trainer, its results, and the backfill and upgrade commands."""

import os
import tracemalloc

import numpy as np
import pytest
from conftest import ROOT, compatible_overrides, run_in_process

from bebrjax.commands import encode, export, upgrade_gallery
from bebrjax.config import ConfigError, apply_overrides, load_config
from bebrjax.data import DataError, synthetic
from bebrjax.evaluators.retrieval import recall_at_k
from bebrjax.inference import Binarizer, Versions, load
from bebrjax.inference.heldout import held_out
from bebrjax.inference.query import search_index
from bebrjax.models.code_adapter import fit_ridge
from bebrjax.search import BinaryIndex, codes
from bebrjax.serving import load_bundle
from bebrjax.trainers import compatible, compatible_preflight

CELLS = ("old/old", "new/new", "new->old", "old->new", "new->psi(old)")


def _config(*extra):
    config = load_config(os.path.join(ROOT, "configs/bebr/compatible.py"))
    apply_overrides(config, [*compatible_overrides(), *extra])
    return config


@pytest.mark.slow
def test_the_run_reports_the_matrix_and_the_backfill_curves(compatible_run):
    workdir, results = compatible_run
    for kind in ("binary", "float"):
        for cell in CELLS:
            assert set(results["compatibility"][kind][cell]) == {"R@1", "R@5", "R@10"}
    binary, backfill = results["compatibility"]["binary"], results["backfill"]
    assert backfill["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(backfill["auc"]) >= {"random", "worst_first", "keep_old", "independent"}
    curves = backfill["curves"]
    # The mixed-version index at f = 0 and f = 1 is the single-version search of the matrix.
    for name in ("random", "worst_first"):
        assert curves[name][0] == binary["new->old"]["R@10"]
        assert curves[name][-1] == binary["new/new"]["R@10"]
    assert curves["psi"][0] == binary["new->psi(old)"]["R@10"]
    assert curves["independent"][-1] == curves["keep_old"][-1] == binary["paragon"]["R@10"]
    assert curves["keep_old"][0] == binary["old/old"]["R@10"]
    # Version-aware: f = 0 is the fused cell; f = 1 the re-encoding model's own search.
    for name, model in (("version_aware", "new/new"), ("version_aware_independent", "paragon")):
        for order in ("", "_worst_first"):
            assert curves[name + order][0] == binary["new+old->old"]["R@10"]
            assert curves[name + order][-1] == binary[model]["R@10"]
    assert backfill["best"] == max(backfill["auc"], key=backfill["auc"].get)
    for name in ("version_aware", "version_aware_independent"):
        assert os.path.isfile(workdir / "plans" / f"{name}.json")
    assert "version-aware" in (workdir / "results.md").read_text()
    for name in ("results.json", "results.md", "results.png", "backfill.png"):
        assert os.path.isfile(workdir / name)
    loaded = load(str(workdir))
    assert isinstance(loaded, Versions) and isinstance(loaded.binarizer("new"), Binarizer)
    assert set(loaded.parts) == {"old", "new", "independent", "psi"}


@pytest.mark.slow
def test_backfill_and_upgrade_commands_give_the_curves_of_the_run(compatible_run, tmp_path, capsys):
    workdir, results = compatible_run
    old_pairs, new_pairs = held_out(str(workdir / "old")), held_out(str(workdir / "new"))
    n = len(new_pairs)
    index = str(tmp_path / "gallery.bebr")
    np.save(tmp_path / "old_docs.npy", old_pairs.doc)
    docs = str(tmp_path / "old_docs.npy")
    assert encode.main(["--workdir", str(workdir / "old"), "--input", docs, "--index", index]) == 0
    half = np.random.default_rng(0).permutation(n)[: n // 2]  # the run's random order, f = 0.5
    np.savez(tmp_path / "step.npz", doc=new_pairs.doc[half], ids=half)
    step = str(tmp_path / "step.npz")
    argv = ["--workdir", str(workdir / "new"), "--input", step, "--index", index, "--ids", step]
    assert encode.main(argv) == 0
    assert BinaryIndex.load(index).counts() == {"old": n - n // 2, "new": n // 2}

    def recall():
        ids, _ = search_index(index, new_pairs.query, k=10, workdir=str(workdir / "new"))
        return recall_at_k(ids, (10,))["R@10"]

    curves = results["backfill"]["curves"]
    assert recall() == curves["random"][2]
    assert upgrade_gallery.main(["--workdir", str(workdir), "--index", index]) == 0
    assert BinaryIndex.load(index).counts() == {"old": 0, "new": n // 2, "psi": n - n // 2}
    assert recall() == curves["psi"][2]
    # Nothing old is left: a second upgrade is an empty step that writes nothing.
    stamp = os.path.getmtime(os.path.join(index, "codes.npy"))
    assert upgrade_gallery.main(["--workdir", str(workdir), "--index", index]) == 0
    assert os.path.getmtime(os.path.join(index, "codes.npy")) == stamp
    # The compatible run exports its new binarizer with the mixed index, and psi.
    bundle, psi_bundle = str(tmp_path / "bundle"), str(tmp_path / "psi")
    argv = ["--workdir", str(workdir), "--platforms", "cpu"]
    assert export.main([*argv, "--out", bundle, "--index", index]) == 0
    assert export.main([*argv, "--out", psi_bundle, "--part", "psi"]) == 0
    _, served = load_bundle(bundle).search(new_pairs.query, 10)
    ids, _ = search_index(index, new_pairs.query, k=10, workdir=str(workdir / "new"))
    assert np.array_equal(served, ids)
    old_codes = load(str(workdir / "old")).encode(old_pairs.doc)
    assert np.array_equal(
        load_bundle(psi_bundle).encode(old_codes), load(str(workdir)).upgrade_codes(old_codes)
    )
    capsys.readouterr()
    argv = ["--workdir", str(workdir), "--index", index, "--from", "psi", "--version", "psi"]
    assert upgrade_gallery.main(argv) == 2
    assert "both 'psi'" in capsys.readouterr().err
    # A backfill step with a repeated id is refused in one line.
    np.savez(tmp_path / "bad.npz", doc=new_pairs.doc[:2], ids=np.array([3, 3]))
    bad = str(tmp_path / "bad.npz")
    argv = ["--workdir", str(workdir / "new"), "--input", bad, "--index", index, "--ids", bad]
    assert encode.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "3" in err, err
    assert encode.main([*argv[:-2], "--ids", step, "--overwrite"]) == 2
    assert "--overwrite does not go with --ids" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_old_data_is_refused_before_anything_is_written(compatible_run, tmp_path):
    workdir, _ = compatible_run
    out = tmp_path / "run"
    for extra, error, message in [
        (["data.old.num_pairs=600"], DataError, "600 pairs and data.new"),
        ([f"old_workdir={workdir / 'old'}", "data.old.noise=1.7"], ConfigError, "other data"),
    ]:
        with pytest.raises(error, match=message):
            compatible.train_and_evaluate(_config(*extra), str(out))
        assert not out.exists()
    # The same old data: the finished old run is reused as it is.
    stamp = os.path.getmtime(workdir / "old" / "results.json")
    config = _config(f"old_workdir={workdir / 'old'}")
    splits, stages, mesh = compatible_preflight.preflight(config, str(out))
    compatible.run_stage(stages["old"], config.old_workdir, mesh)
    assert os.path.getmtime(workdir / "old" / "results.json") == stamp and not out.exists()


def test_a_missing_old_key_is_one_line_and_exit_2(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "pairs.npz",
        **{k: rng.standard_normal((50, 8)) for k in ("query_new", "doc_new", "query_old")},
    )
    spec = f"configs/bebr/compatible.py:path={tmp_path / 'pairs.npz'}"
    status, stderr = run_in_process("--config", spec, "--workdir", str(tmp_path / "w"))
    assert status == 2
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "no array 'doc_old'" in err[0], stderr
    assert not (tmp_path / "w").exists()


def test_psi_is_fitted_from_compact_codes_in_bounded_memory():
    rng = np.random.default_rng(0)
    old, new = (
        2 * rng.integers(0, 2, (100_000, planes, 32), dtype=np.int8) - 1 for planes in (2, 3)
    )
    x, y = compatible.compact_codes(old), compatible.compact_codes(new)
    assert x.dtype == y.dtype == np.float16
    np.testing.assert_array_equal(x.astype(np.float32), codes.decode(old))  # exact
    tracemalloc.start()
    try:
        params = fit_ridge(x, y, 0.01)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes + y.nbytes  # float64 copies of them would be 8x
    # The blockwise sums give the closed form's map.
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x64 - x64.mean(0), y64 - y64.mean(0)
    scatter = xc.T @ xc
    kernel = np.linalg.solve(scatter + 0.01 * np.trace(scatter) / 32 * np.eye(32), xc.T @ yc)
    np.testing.assert_allclose(params["kernel"], kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(params["bias"], y64.mean(0) - x64.mean(0) @ kernel, atol=1e-5)


@pytest.mark.slow
def test_groups_of_one_part_split_both_parts_alike(tmp_path):
    pairs = synthetic.get_data(num_pairs=640, dim=16, latent_dim=4, num_clusters=10, siblings=4)
    arrays = dict(query=pairs.query, doc=pairs.doc, labels=pairs.labels)
    new, old = str(tmp_path / "new.npz"), str(tmp_path / "old.npz")
    np.savez(new, **{f"{k}_new": v for k, v in arrays.items()}, groups=pairs.groups)
    np.savez(old, **{f"{k}_old": v for k, v in arrays.items()})  # the same pairs, no groups
    spec = f"configs/bebr/compatible.py:path={new},old_path={old}"
    overrides = [f"--config.{o}" for o in compatible_overrides() if not o.startswith("data.")]
    workdir = tmp_path / "run"
    assert run_in_process("--config", spec, "--workdir", str(workdir), *overrides) == (0, "")
    held = {part: held_out(str(workdir / part)) for part in ("old", "new")}
    np.testing.assert_array_equal(held["old"].query, held["new"].query)  # row i: one pair
    np.testing.assert_array_equal(held["old"].groups, held["new"].groups)
    # Both parts grouped, but otherwise: refused in one line before anything is written.
    np.savez(old, **{f"{k}_old": v for k, v in arrays.items()}, groups=np.arange(640) // 2)
    status, err = run_in_process("--config", spec, "--workdir", str(tmp_path / "w"), *overrides)
    assert status == 2 and "group the pairs differently (rows 0 and 2" in err, err
    assert not (tmp_path / "w").exists()
