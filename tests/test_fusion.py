"""Version-aware search: fused scores ranked exactly, scoring plans, the command path."""

import json
import os
from fractions import Fraction

import jax
import numpy as np
import pytest
from conftest import KERNEL_PARAMS

from bebrjax import sharding
from bebrjax.commands import export, fit_plan, search
from bebrjax.errors import PlanError
from bebrjax.evaluators.retrieval import recall_at_k
from bebrjax.inference.heldout import held_out
from bebrjax.inference.query import search_versions
from bebrjax.search import BinaryIndex, ShardedIndex
from bebrjax.search import codes as codes_lib
from bebrjax.search import plan as plan_lib
from bebrjax.search.fusion import Fusion, search_fused

RNG = np.random.default_rng(7)


def planes(n, u, m, rng=RNG):
    return (1 - 2 * rng.integers(0, 2, (n, u + 1, m))).astype(np.int8)


def brute_force(index, queries, fusion, k):
    """The top k by the fused score of the definition, in Fractions, ties to the lower id."""
    versions = list(index.versions)
    alpha, beta = fusion.aligned(versions)
    doc_v = index.doc_versions
    stored = index.planes(np.arange(index.ntotal))
    docs = []
    for d in range(index.ntotal):
        u_d = index.versions[versions[doc_v[d]]]
        code = stored[d : d + 1, : u_d + 1]
        ints = codes_lib.decode_int(code).astype(np.int64)[0] * 2 ** (index.u - u_d)
        inv = Fraction(float(codes_lib.inverse_norms(code)[0])) * Fraction(2) ** -index.u
        docs.append((ints, inv))
    out = []
    for r in range(len(next(iter(queries.values())))):
        keyed = []
        for d, (ints, inv) in enumerate(docs):
            v = doc_v[d]
            total = Fraction(0)
            for q, name in enumerate(fusion.models):
                if alpha[q, v] == 0:
                    continue
                q_ints = codes_lib.decode_int(queries[name][r : r + 1, :, : index.m])
                q_ints = q_ints.astype(np.int64)[0]
                c = Fraction(float(alpha[q, v] / np.linalg.norm(q_ints.astype(np.float64))))
                total += c * int(q_ints @ ints)
            keyed.append((-(Fraction(float(beta[v])) + inv * total), d))
        out.append([d for _, d in sorted(keyed)[:k]])
    return np.array(out)


@pytest.fixture(scope="module")
def mixed():
    """A mixed index (old u = 0, new u = 1, exact duplicates for ties) and two query models."""
    m, n = 40, 260
    old = planes(n, 0, m)
    new = planes(n, 1, m)
    old[[11, 245]] = old[3]  # duplicate old codes: equal fused scores
    new[[40, 41, 250]] = new[7]
    upgraded = np.concatenate([[7, 40, 41, 250], RNG.permutation(np.arange(50, 240))[:100]])
    queries = {"old": planes(6, 0, m), "new": planes(6, 1, m + 8)}  # new queries are wider
    queries["old"][0] = old[3]
    queries["new"][1, :, :m] = new[7]
    fusion = Fusion(("old", "new"), ("old", "new"), [[1.3, 0.0], [0.6, 2.1]], [-0.2, 0.4])
    return m, old, new, upgraded, queries, fusion


def build(m, old, new, upgraded, **kwargs):
    index = BinaryIndex(m, 0, version="old", block_size=128, **kwargs)
    index.add(old)
    index.replace(upgraded, new[upgraded], "new")
    return index


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_fused_ranking_equals_fraction_brute_force(mixed, kernel):
    m, old, new, upgraded, queries, fusion = mixed
    one = build(m, old, new, upgraded, kernel=kernel)
    eight = build(m, old, new, upgraded, kernel=kernel, mesh=sharding.make_mesh(8))
    assert jax.device_count() == 8
    expected = brute_force(one, queries, fusion, 12)
    s1, i1 = search_fused(one, queries, fusion, 12)
    s8, i8 = search_fused(eight, queries, fusion, 12)
    np.testing.assert_array_equal(i1, expected)
    np.testing.assert_array_equal(i8, expected)
    np.testing.assert_array_equal(s1, s8)
    for row, tied in ((0, [3, 11, 245]), (1, [7, 40, 41, 250])):  # equal scores: by id
        found = i1[row].tolist()
        start = found.index(tied[0])
        assert found[start : start + len(tied)] == tied
    # One process's ShardedIndex answers the same (its collectives over one process).
    sharded = ShardedIndex(one)
    np.testing.assert_array_equal(search_fused(sharded, queries, fusion, 12)[1], expected)


def test_a_fusion_of_one_model_ranks_as_the_plain_search(mixed):
    m, old, new, upgraded, queries, _ = mixed
    index = build(m, old, new, upgraded)
    only_new = Fusion(("new",), ("old", "new"), [[1.0, 1.0]], [0.0, 0.0])
    scores, ids = search_fused(index, {"new": queries["new"]}, only_new, 10)
    plain_scores, plain_ids = index.search(queries["new"], 10)
    np.testing.assert_array_equal(ids, plain_ids)
    norms = np.linalg.norm(codes_lib.decode(queries["new"][:, :, :m]), axis=1)
    np.testing.assert_allclose(scores, plain_scores / norms[:, None], rtol=1e-6)


def test_fused_search_refuses_what_does_not_fit(mixed):
    m, old, new, upgraded, queries, fusion = mixed
    index = build(m, old, new, upgraded)
    with pytest.raises(ValueError, match=r"missing: \['old'\]"):
        search_fused(index, {"new": queries["new"]}, fusion, 5)
    lacking = Fusion(("new",), ("new", "psi"), [[1.0, 1.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="lacks"):
        search_fused(index, {"new": queries["new"]}, lacking, 5)
    from bebrjax.search import IVFIndex

    ivf = IVFIndex.from_index(index, nlist=4)
    with pytest.raises(ValueError, match="got IVFIndex"):
        search_fused(ivf, queries, fusion, 5)
    unscored = Fusion(("old", "new"), ("old", "new"), [[1.0, 0.0], [1.0, 0.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"\['new'\] are scored by no query model"):
        search_fused(index, queries, unscored, 5)


def test_calibration_worked_out_by_hand():
    # Codes of width 2, u = 0: cosines are +-1 and 0. Pairs: (q_i, d_i).
    q = np.array([[[1, 1]], [[1, -1]], [[-1, -1]]], np.int8)
    d = np.array([[[1, 1]], [[1, -1]], [[1, 1]]], np.int8)
    # cos matrix rows q, cols d: [[1, 0, 1], [0, 1, 0], [-1, 0, -1]]; off-diagonal
    # negatives: 0, 1, 0, 0, -1, 0 -> mean 0, std sqrt(2/6); positives 1, 1, -1.
    fitted = plan_lib.fit({"a": (q, d)}, {"a": ("a", {"a": 1.0})}, {"a": {}})
    (term,) = fitted.versions[0].terms
    assert term.scale == pytest.approx(np.sqrt(3)) and term.shift == pytest.approx(0.0)
    margin = plan_lib.fit({"a": (q, d)}, {"a": ("a", {"a": 1.0})}, {"a": {}}, calibration="margin")
    (term,) = margin.versions[0].terms  # (cos - 0) / (1/3 - 0)
    assert term.scale == pytest.approx(3.0) and term.shift == pytest.approx(0.0)
    # Two terms: the weighted sum is standardized again on its negatives.
    two = plan_lib.fit(
        {"a": (q, d), "b": (-q, d)}, {"a": ("a", {"a": 1.0, "b": 0.5})}, {"a": {}, "b": {}}
    )
    # b's cosines are minus a's: z_a + 0.5 z_b = 0.5 z_a, a z-score of std 0.5 -> scale 2.
    assert two.versions[0].scale == pytest.approx(2.0)
    fusion = two.fusion()
    assert fusion.alpha[:, 0] == pytest.approx([2 * np.sqrt(3), np.sqrt(3)])  # times cos_b


def test_plan_round_trip_and_bad_files(tmp_path):
    q, d = planes(30, 1, 16), planes(30, 1, 16)
    models = {"old": {"workdir": "/w/old", "step": 3, "m": 16, "u": 1}, "new": {}}
    plan = plan_lib.fit(
        {"old": (q, d), "new": (q[::-1].copy(), d)},
        {"old": ("old", {"old": 1.0, "new": 0.5}), "new": ("new", {"new": 1.0})},
        models,
        fitted_on={"pairs": 30},
    )
    path = str(tmp_path / "plan.json")
    plan.save(path)
    again = plan_lib.load(path)
    assert again == plan and again.to_dict() == plan.to_dict()
    np.testing.assert_array_equal(again.fusion().alpha, plan.fusion().alpha)
    assert repr(plan) == "ScoringPlan(m=16, negatives, old<-old+new, new<-new)"
    (tmp_path / "bad.json").write_text(json.dumps({**plan.to_dict(), "version": 9}))
    with pytest.raises(PlanError, match="format version 9"):
        plan_lib.load(str(tmp_path / "bad.json"))
    with pytest.raises(PlanError, match="no such scoring plan"):
        plan_lib.load(str(tmp_path / "missing.json"))


@pytest.mark.slow
def test_the_command_path_reproduces_the_trainers_curve(compatible_run, tmp_path, capsys):
    workdir, results = compatible_run
    plan_path = str(workdir / "plans" / "version_aware.json")
    plan = plan_lib.load(plan_path)
    assert set(plan.fusion().models) == {"old", "new"} and plan.m == 16
    old_pairs, new_pairs = held_out(str(workdir / "old")), held_out(str(workdir / "new"))
    n = len(new_pairs)
    np.savez(tmp_path / "old.npz", doc=old_pairs.doc, query=old_pairs.query)
    np.savez(tmp_path / "new.npz", doc=new_pairs.doc, query=new_pairs.query)
    from bebrjax.commands import encode

    index = str(tmp_path / "gallery.bebr")
    argv = ["--workdir", str(workdir / "old"), "--input", str(tmp_path / "old.npz")]
    assert encode.main([*argv, "--key", "doc", "--index", index]) == 0
    # Only old documents: the plan names "new", which the index lacks.
    flags = ["--index", index, "--k", "10", "--out", str(tmp_path / "hits.npz"), "--overwrite"]
    models = [
        "--queries",
        f"old={tmp_path / 'old.npz'}",
        "--queries",
        f"new={tmp_path / 'new.npz'}",
    ]
    capsys.readouterr()
    assert search.main([*flags, "--plan", plan_path, *models]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "['new'] that the index lacks" in err, err
    half = np.random.default_rng(0).permutation(n)[: n // 2]  # the run's random order, f = 0.5
    np.savez(tmp_path / "step.npz", doc=new_pairs.doc[half], ids=half)
    step = str(tmp_path / "step.npz")
    argv = ["--workdir", str(workdir / "new"), "--input", step, "--index", index, "--ids", step]
    assert encode.main(argv) == 0
    assert search.main([*flags, "--plan", plan_path, *models]) == 0
    ids = np.load(tmp_path / "hits.npz")["ids"]
    curve = results["backfill"]["curves"]["version_aware"]
    assert recall_at_k(ids, (10,))["R@10"] == curve[2]
    library, _ = search_versions(
        index, {"old": old_pairs.query, "new": new_pairs.query}, k=10, plan=plan_path
    )
    np.testing.assert_array_equal(library, ids)
    # The plan's bundle answers the same from the command line.
    bundle = str(tmp_path / "bundle")
    assert export.main(["--plan", plan_path, "--out", bundle, "--platforms", "cpu"]) == 0
    assert search.main([*flags, "--bundle", bundle, *models]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "hits.npz")["ids"], ids)
    # Refusals, one line each: a query model missing, a plan of another width.
    for extra, message in [
        (models[:2], "queries were given for ['old']"),
        ([*models, "--nprobe", "2"], "do not go with it"),
    ]:
        assert search.main([*flags, "--plan", plan_path, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    wide = plan_lib.from_dict({**plan.to_dict(), "m": 8})
    wide.save(str(tmp_path / "wide.json"))
    assert search.main([*flags, "--plan", str(tmp_path / "wide.json"), *models]) == 2
    assert "fitted on codes of width m=8" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_plan_command_over_independent_runs(compatible_run, tmp_path, capsys):
    workdir, _ = compatible_run
    out = str(tmp_path / "plan.json")
    runs = ["--run", f"old={workdir / 'old'}", "--run", f"independent={workdir / 'independent'}"]
    assert fit_plan.main([*runs, "--out", out, "--pairs", "200"]) == 0
    plan = plan_lib.load(out)
    assert [v.name for v in plan.versions] == ["old", "independent"]
    assert plan.models["old"]["workdir"] == os.path.abspath(workdir / "old")
    assert plan.fitted_on["pairs"] == 200 and plan.fitted_on["split"] == "train"
    capsys.readouterr()
    assert fit_plan.main([*runs, "--out", out]) == 2  # exists, no --overwrite
    assert fit_plan.main([*runs, "--score", "old=nope:0.5", "--out", out, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "names no run: ['nope']" in err[1], err
