"""The upgrade protocol: metrics by hand, the method orderings, the command line."""

import json
import os

import numpy as np
import pytest
from conftest import ROOT, run_in_process, small_compare_config
from test_upgrade_resume import kill_and_resume

from bebrjax import inference
from bebrjax.config import ConfigError, apply_overrides, load_config
from bebrjax.data.upgrade_splits import labelled_data, load_labelled, sequence_split
from bebrjax.evaluators.compatibility import compatibility_matrix, retrieval_metrics
from bebrjax.trainers import sequential, upgrade
from bebrjax.trainers.upgrade import checks, compare

# Three gallery items on the unit circle; labels a=0, b=1.
GALLERY = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
G_LABELS = np.array([0, 1, 0])


def test_map_at_r_recall_and_tar_by_hand():
    # query 0 (label 0) at angle 0: order 0 (rel), 2 (rel), 1 -> R=2, AP@R = (1 + 1) / 2 = 1.
    # query 1 (label 0) near (0, 1): order 1 (irr), 2 (rel), 0 (rel) -> P@2 = 1/2, AP@R = 0.25.
    # query 2 (label 1) at (1, 0): order 0, 2, 1 (rel at 3) -> R=1, AP@R = 0; R@1 = 0, R@5 = 1.
    queries = np.array([[1.0, 0.0], [0.1, 1.0], [1.0, 0.0]], np.float32)
    q_labels = np.array([0, 0, 1])
    metrics, top1 = retrieval_metrics(queries, q_labels, GALLERY, G_LABELS, ks=(1, 5), fars=(0.25,))
    assert metrics["mAP@R"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert metrics["R@1"] == pytest.approx(1 / 3) and metrics["R@5"] == 1.0
    assert top1.tolist() == [True, False, False]
    # genuine scores: q0: 1, 0.6; q1: ~0.1, ~0.85; q2: 0. Impostors: q0: 0; q1: ~0.99; q2: 1, 0.6.
    # FAR 0.25 of 4 impostors -> threshold = 2nd highest impostor (0.99): TAR = 1/5.
    assert metrics["TAR@FAR=0.25"] == pytest.approx(1 / 5)


def test_flip_rate_gain_and_width_fitting():
    q_labels = np.array([0, 1, 0])
    old_q = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)  # right, right, wrong
    new_q = np.array([[0.0, 1.0, 5.0], [0.0, 1.0, 5.0], [1.0, 0.0, 5.0]], np.float32)
    # new queries are 3-d: truncated to the old gallery's 2 dims -> wrong, right, right.
    out = compatibility_matrix(
        {
            "old": (old_q, GALLERY),
            "new": (new_q, GALLERY[:, [0, 1, 1]]),
            "paragon": (old_q, GALLERY),
        },
        q_labels,
        G_LABELS,
        ks=(1,),
        fars=(0.5,),
    )
    assert out["negative_flip_rate"] == pytest.approx(1 / 3)
    assert out["matrix"]["new->old"]["R@1"] == pytest.approx(2 / 3)
    assert np.isnan(out["update_gain"])  # paragon equal to old/old: no room to gain


def test_update_gain_by_hand():
    # old/old: the old queries rank q0 and q1 right (AP 1) and q2's gallery at ranks 2, 3
    # (AP@R = 1/4): mAP@R 3/4. new->old (truncated to 2-d): q2 now finds g2 first,
    # then g1 (wrong), g0: AP@R = 1/2, mAP@R 5/6. The paragon ranks every query right: 1.
    # Gain = (5/6 - 3/4) / (1 - 3/4) = 1/3.
    q_labels = np.array([0, 1, 0])
    old_q = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
    new_q = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0], [0.6, 0.8, 5.0]], np.float32)
    paragon_q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    out = compatibility_matrix(
        {
            "old": (old_q, GALLERY),
            "new": (new_q, GALLERY[:, [0, 1, 1]]),
            "paragon": (paragon_q, GALLERY),
        },
        q_labels,
        G_LABELS,
        ks=(1,),
        fars=(0.5,),
    )
    assert out["matrix"]["old/old"]["mAP@R"] == pytest.approx(3 / 4)
    assert out["matrix"]["new->old"]["mAP@R"] == pytest.approx(5 / 6)
    assert out["update_gain"] == pytest.approx(1 / 3)
    assert out["negative_flip_rate"] == 0.0 and out["compatible"]


@pytest.mark.slow
def test_method_orderings_on_the_synthetic_default(compare_run):
    workdir, results = compare_run
    runs = results["methods"]

    def cross(method):
        return runs[method]["matrix"]["new->old"]["mAP@R"]

    old = runs["bct"]["matrix"]["old/old"]["mAP@R"]
    assert cross("bct") > old  # BCT meets the compatibility criterion
    assert cross("independent") < 0.05  # near chance (40 classes)
    assert cross("l2") < cross("bct")
    assert cross("unibct") >= cross("bct")
    # On this data compatibility costs the new model nothing (BCT's and DMU's new/new reach
    # the paragon's, so DMU has no degradation to remove); DMU's and BiCT's upgraded gallery
    # beats BCT's untouched one.
    paragon = runs["bct"]["matrix"]["paragon"]["mAP@R"]
    for method in ("bct", "dmu"):
        assert runs[method]["matrix"]["new/new"]["mAP@R"] > paragon - 0.01
    for method in ("dmu", "bict"):
        assert runs[method]["matrix"]["new->psi(old)"]["mAP@R"] > cross("bct")
        assert runs[method]["adapted"]["compatible"]
    assert "new->psi(old)" not in runs["bct"]["matrix"]
    assert len({r["matrix"]["old/old"]["mAP@R"] for r in runs.values()}) == 1  # one old model
    for run in runs.values():  # the gains are the formula's, on the printed cells
        m = {cell: v["mAP@R"] for cell, v in run["matrix"].items()}
        room = m["paragon"] - m["old/old"]
        assert run["update_gain"] == pytest.approx((m["new->old"] - m["old/old"]) / room)
        if "adapted" in run:
            gain = (m["new->psi(old)"] - m["old/old"]) / room
            assert run["adapted"]["update_gain"] == pytest.approx(gain)
    for name in (
        "results.json",
        "results.md",
        "results.png",
        "old/stage.json",
        "bct/results.png",
        "paragon/checkpoints",
        "bict/forward/checkpoints",
    ):
        assert (workdir / name).exists(), name
    assert (
        json.loads((workdir / "bct/results.json").read_text())["split"]["kind"] == "extended_class"
    )


@pytest.mark.slow
def test_a_stage_refuses_reuse_under_another_config(tmp_path):
    config = small_compare_config("train.steps=2")
    sub, _ = compare.method_configs(config, str(tmp_path))["independent"]
    upgrade.train_and_evaluate(sub, str(tmp_path / "a"))
    apply_overrides(sub, ["old.model.embedding_dim=16"])
    with pytest.raises(ConfigError, match="holds a model trained with another config"):
        upgrade.train_and_evaluate(sub, str(tmp_path / "b"))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.ones((10, 3)), "labels": np.zeros(10, int)}, "no array 'y'"),
        ({"x": np.ones((10, 3), np.int32), "y": np.zeros(10, int)}, "floating point"),
        ({"x": np.ones((10, 3)), "y": np.zeros(9, int)}, "expected [10]"),
        ({"x": np.full((10, 3), np.inf), "y": np.zeros(10, int)}, "non-finite"),
    ],
)
def test_bad_labelled_input_exits_nonzero_and_writes_nothing(tmp_path, arrays, message):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    workdir = tmp_path / "run"  # the command's exit: test_cli's one-class labelled data
    status, stderr = run_in_process(
        "--workdir", str(workdir), "--config", f"configs/upgrade/bct.py:data=labelled,path={path}"
    )
    assert status == 2 and message in stderr and str(path) in stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_bct_is_compatible_on_digits(tmp_path):
    pytest.importorskip("sklearn", reason="digits come with scikit-learn (the dev extra)")
    config = load_config(os.path.join(ROOT, "configs/upgrade/bct.py:data=digits,steps=100"))
    # The new ResNet with one block per stage (not two): the same finding, a faster compile.
    stages = "new.model.backbone_args.stage_sizes=(1,1)"
    apply_overrides(config, ["mesh.num_devices=1", "train.log_every=50", stages])
    results = upgrade.train_and_evaluate(config, str(tmp_path))
    assert results["compatible"]
    assert results["matrix"]["new->old"]["mAP@R"] > results["matrix"]["old/old"]["mAP@R"]


@pytest.mark.parametrize(
    "config_file, override, message",
    [
        ("bct", "compat.unibct_lambda=1.0", "'compat.unibct_lambda' = 1.0: must be in [0, 1)"),
        ("bct", "old.model.backbone=vit", "'old.model.backbone' = 'vit'"),
        ("bct", "eval.fars=(0.1,2.0)", "'eval.fars'"),
        ("bct", "train.log_every=0", "'train.log_every' = 0"),
        ("bct", "method=bogus", "'method' = 'bogus'"),
        ("dmu", "dmu.forward_emphasis=2.0", "'dmu.forward_emphasis' = 2.0: must be in [0, 1]"),
        ("sequential", "sequence.embedding_dims=(32,64)", "one entry per step"),
        ("sequential", "dmu.measure=bogus", "'dmu.measure' = 'bogus'"),
        ("sequential", "forward.blocks=0", "'forward.blocks' = 0"),
        ("sequential", "methods=()", "'methods' is empty"),
    ],
)
def test_upgrade_config_errors_name_the_key(config_file, override, message):
    config = load_config(os.path.join(ROOT, f"configs/upgrade/{config_file}.py"))
    apply_overrides(config, [override])
    trainer = sequential if config_file == "sequential" else checks
    with pytest.raises(ConfigError) as info:
        trainer.validate(config)
    assert message in str(info.value)


def test_image_backbone_argument_and_wrong_kind_of_data():
    config = load_config(os.path.join(ROOT, "configs/upgrade/bct.py:backbone=resnet"))
    assert config.new.model.backbone == "resnet" and "stage_sizes" in config.new.model.backbone_args
    config = load_config(os.path.join(ROOT, "configs/upgrade/bct.py"))
    config.data = load_config(os.path.join(ROOT, "configs/bebr/demo.py")).data
    with pytest.raises(ConfigError, match="upgrades train on labelled data"):
        load_labelled(config)


def test_tar_at_far_is_nan_without_impostors():
    from bebrjax.evaluators.compatibility import tar_at_far

    x = np.eye(3, dtype=np.float32)
    assert np.isnan(tar_at_far(x, np.zeros(3, int), x, np.zeros(3, int), [0.1])["TAR@FAR=0.1"])


@pytest.mark.slow
def test_sequential_upgrades_track_the_stored_gallery(tmp_path):
    config = load_config(os.path.join(ROOT, "configs/upgrade/sequential.py"))
    apply_overrides(
        config,
        [
            "train.steps=120",
            "data.num_classes=40",
            "data.per_class=40",
            "mesh.num_devices=1",
            "train.log_every=50",
            "train.checkpoint_every=60",
            'methods=("bct","bict")',
        ],
    )
    results = sequential.train_and_evaluate(config, str(tmp_path))
    bct, bict = results["methods"]["bct"], results["methods"]["bict"]
    assert [r["gallery"] for r in bct] == ["phi1"] * 3  # BCT never touches the gallery
    assert [r["gallery"] for r in bict] == ["phi1", "psi2(phi1)", "psi3(psi2(phi1))"]
    for row in bct:  # so its stored gallery is phi1's
        assert row["new->stored"] == row["new->phi1"]
    assert bct[0] == bict[0]  # one phi1 for every method
    assert [r["new/new"] for r in bct[1:]] == [r["new/new"] for r in bict[1:]]  # BiCT's stage 1
    for step in (1, 2):
        assert bict[step]["new->stored"]["mAP@R"] > bct[step]["new->phi1"]["mAP@R"]
    assert [s["classes"] for s in results["train_sets"]] == [12, 24, 40]
    for name in ("results.json", "results.md", "results.png", "bict/step3/forward/checkpoints"):
        assert (tmp_path / name).exists(), name
    # loaded back, the chain phi1 -> psi2 -> psi3 gives the stored gallery its score again
    runs = inference.load(str(tmp_path))
    assert set(runs) == {"bct/step2", "bct/step3", "bict/step2", "bict/step3"}
    data = labelled_data(config)
    _, query_rows, gallery_rows = sequence_split(
        data.y,
        config.split.kind,
        config.sequence.ratios,
        eval_fraction=config.split.eval_fraction,
        seed=config.seed,
    )
    stored = runs["bict/step2"].old(data.x[gallery_rows])
    for step in ("bict/step2", "bict/step3"):
        stored = runs[step].upgrade(stored)
    metrics, _ = retrieval_metrics(
        runs["bict/step3"].new(data.x[query_rows]),
        data.y[query_rows],
        stored,
        data.y[gallery_rows],
    )
    assert metrics["mAP@R"] == pytest.approx(bict[2]["new->stored"]["mAP@R"], abs=1e-6)
    # killed in the last step's forward stage, the sequence resumes to the same end
    kill_and_resume(
        tmp_path,
        ("bict/step3/forward",),
        lambda: sequential.train_and_evaluate(config, str(tmp_path)),
    )


def test_sweep_names_each_run_and_rejects_an_empty_grid(tmp_path):
    config = load_config(os.path.join(ROOT, "configs/upgrade/bict_sweep.py"))
    runs = compare.method_configs(config, str(tmp_path))
    assert list(runs)[0] == "bict@compat.weight=0.0"
    sub, path = runs["bict@compat.weight=0.3"]
    assert sub.compat.weight == 0.3 and path.endswith("bict@0.3")
    assert sub.old_workdir == str(tmp_path / "old")  # compat.weight leaves the old model alone
    apply_overrides(config, ["sweep.key=seed", "sweep.grid=(0,1)"])
    runs = compare.method_configs(config, str(tmp_path))
    assert runs["bict@seed=0"][0].old_workdir == str(tmp_path / "old")
    assert runs["bict@seed=1"][0].paragon_workdir == str(tmp_path / "paragon@1")
    apply_overrides(config, ["sweep.grid=()"])
    with pytest.raises(ConfigError, match="'sweep.grid' is empty"):
        compare.method_configs(config, str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_a_model_that_cannot_be_built_is_refused_before_writing(tmp_path):
    config = load_config(os.path.join(ROOT, "configs/upgrade/sequential.py"))
    apply_overrides(
        config, ['sequence.backbone_args=({"widths":(8,)},{"widths":(8,)},{"width":16})']
    )
    with pytest.raises(ConfigError, match=r"'sequence.backbone_args\[2\]'"):
        sequential.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "arg, override, message",
    [
        ("data=labelled,path=/nonexistent/data.npz", "", "/nonexistent/data.npz"),
        ("", "--config.split.kind=open_class", "cannot grow over a sequence"),
    ],
)
def test_bad_sequential_input_exits_nonzero_and_writes_nothing(tmp_path, arg, override, message):
    workdir = tmp_path / "run"
    extra = [override] if override else []
    args = ("--workdir", str(workdir), "--config", f"configs/upgrade/sequential.py:{arg}", *extra)
    status, stderr = run_in_process(*args)
    assert status == 2 and message in stderr
    assert not workdir.exists()
