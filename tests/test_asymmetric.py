"""Asymmetric queries: a float query quantized to B bits against the stored codes, end to end."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_overrides

from bebrjax.commands import encode, export, search
from bebrjax.inference import load
from bebrjax.inference.heldout import held_out, write_pairs
from bebrjax.inference.query import search_index
from bebrjax.models.binarizer import query_planes
from bebrjax.search import BinaryIndex
from bebrjax.serving import load_bundle

BITS = 4


@pytest.fixture(scope="module")
def asymmetric_run(tmp_path_factory):
    """(workdir, results) of a tiny u = 1 run served with 4-bit queries over every budget."""
    from bebrjax.config import apply_overrides, load_config
    from bebrjax.trainers import binarizer

    config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs/bebr/demo.py"))
    extra = [f"query_bits={BITS}", "loss.budgets=True", "model.loops=1"]
    apply_overrides(config, [*tiny_overrides(), *extra])
    workdir = tmp_path_factory.mktemp("asymmetric")
    return workdir, binarizer.train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_query_planes_are_the_nearest_odd_levels(bits):
    x = np.random.default_rng(bits).standard_normal((50, 24)).astype(np.float32)
    planes = np.asarray(query_planes(jnp.asarray(x), bits))
    assert planes.shape == (50, bits, 24) and set(np.unique(planes)) <= {-1, 1}
    levels = np.einsum("npm,p->nm", planes.astype(np.int64), 2 ** (bits - 1 - np.arange(bits)))
    scaled = x / np.abs(x).max(1, keepdims=True) * (2**bits - 1)
    assert (levels % 2 != 0).all() and np.abs(levels).max() <= 2**bits - 1
    assert np.all(np.abs(levels - scaled) <= 1.0 + 1e-5)  # odd levels are 2 apart: the nearest


@pytest.mark.slow
def test_the_run_reports_the_served_mode_and_every_budget(asymmetric_run):
    workdir, results = asymmetric_run
    retrieval, budgets = results["retrieval"], results["budgets"]
    assert set(retrieval) >= {"float", "binary", "binary_symmetric"}
    rows = {(r["stored_bits"], r["query_bits"]): r for r in budgets}
    assert set(rows) == {(1, 0), (1, BITS), (2, 0), (2, BITS)}
    for k in ("R@1", "R@5", "R@10"):
        assert retrieval["binary"][k] == rows[(2, BITS)][k]
        assert retrieval["binary_symmetric"][k] == rows[(2, 0)][k]
    assert rows[(1, BITS)]["bytes_per_vector"] == 16 / 8 + 4
    model = load(str(workdir))
    assert model.query_bits == BITS
    x = held_out(str(workdir)).query[:5]
    assert model.encode_query(x).shape == (5, BITS, 16)
    assert model.encode_query(x, bits=0).shape == (5, 2, 16)


@pytest.mark.slow
def test_index_command_and_bundle_serve_queries_as_evaluated(asymmetric_run, tmp_path, capsys):
    workdir, results = asymmetric_run
    pairs = str(tmp_path / "eval.npz")
    write_pairs(pairs, held_out(str(workdir)))
    index = str(tmp_path / "docs.bebr")
    assert encode.main(["--workdir", str(workdir), "--input", pairs, "--index", index]) == 0
    assert json.loads(open(os.path.join(index, "header.json")).read())["query_bits"] == BITS
    assert BinaryIndex.load(index).query_bits == BITS
    hits = str(tmp_path / "hits.npz")
    base = ["--index", index, "--queries", pairs, "--k", "10", "--out", hits, "--overwrite"]
    for extra, row in (([], "binary"), (["--query-bits", "0"], "binary_symmetric")):
        capsys.readouterr()
        args = [*base, "--workdir", str(workdir), "--relevant", f"{pairs}:relevant", *extra]
        assert search.main(args) == 0
        recall = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["recall"]
        assert recall == {k: results["retrieval"][row][k] for k in ("R@1", "R@5", "R@10")}
    # A smaller budget of the same model: its first plane, searched with 4-bit queries.
    small = str(tmp_path / "small.bebr")
    argv = ["--workdir", str(workdir), "--input", pairs, "--index", small, "--stored-bits", "1"]
    assert encode.main(argv) == 0
    assert BinaryIndex.load(small).u == 0
    capsys.readouterr()
    args = ["--index", small, "--queries", pairs, "--k", "10", "--out", hits, "--overwrite"]
    assert search.main([*args, "--workdir", str(workdir), "--relevant", f"{pairs}:relevant"]) == 0
    recall = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["recall"]
    (row,) = [r for r in results["budgets"] if (r["stored_bits"], r["query_bits"]) == (1, BITS)]
    assert recall == {k: row[k] for k in ("R@1", "R@5", "R@10")}
    assert encode.main([*argv[:-1], "3", "--overwrite"]) == 2
    assert "stored bits 3: the model's codes have 2 planes" in capsys.readouterr().err
    ids, _ = search_index(index, pairs, k=10, workdir=str(workdir))
    bundle = str(tmp_path / "bundle")
    args = ["--workdir", str(workdir), "--out", bundle, "--index", index, "--platforms", "cpu"]
    assert export.main(args) == 0
    served = load_bundle(bundle)
    assert served.manifest["query"]["bits"] == BITS
    x = np.load(pairs)["query"]
    np.testing.assert_array_equal(served.encode_query(x), load(str(workdir)).encode_query(x))
    np.testing.assert_array_equal(served.search(x, 10)[1], ids)
    assert search.main([*base, "--bundle", bundle, "--query-bits", "3"]) == 2
    assert "queries at 3 bits asked" in capsys.readouterr().err
