"""Exact resume of the upgrade stages: a run killed after a checkpoint ends as if it had not been.

A finished run's last checkpoint of a stage is removed, with every results
file (what a kill between two checkpoints leaves), and the run is started
again: it resumes from the checkpoint before, and its final parameters and
results equal the uninterrupted run's. UniBCT resumes with the refined
prototypes of its checkpoint, DMU with its joint model and psi, BiCT in its
forward stage, and (in test_upgrade.py) a sequence in its last step.
"""

import json
import shutil

import jax
import numpy as np
from conftest import small_compare_config

from bebrjax import checkpoint
from bebrjax.trainers import upgrade, upgrade_compare


def _last(directory):
    """(step, the arrays) of the last checkpoint in `directory`."""
    step = checkpoint.steps(directory)[-1]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return step, jax.tree.leaves(
        jax.tree.map(np.asarray, checkpoint.restore_any(directory, step, device))
    )


def kill_and_resume(workdir, stages, rerun):
    """Removes each stage's last checkpoint and the results, reruns, and checks they match.

    The results are compared without the times ("seconds", "train"): the
    resumed run took its own.
    """
    finals, before = {}, _read_results(workdir)
    for stage in stages:
        step, arrays = finals[stage] = _last(str(workdir / stage / "checkpoints"))
        assert len(checkpoint.steps(str(workdir / stage / "checkpoints"))) > 1
        shutil.rmtree(workdir / stage / "checkpoints" / str(step))
    for path in workdir.rglob("results.*"):
        path.unlink()
    rerun()
    for stage, (step, arrays) in finals.items():
        resumed_step, resumed = _last(str(workdir / stage / "checkpoints"))
        assert resumed_step == step
        for x, y in zip(arrays, resumed, strict=True):
            np.testing.assert_array_equal(x, y)
    assert _read_results(workdir) == before


def _read_results(workdir):
    return json.loads(
        (workdir / "results.json").read_text(),
        object_hook=lambda d: {k: v for k, v in d.items() if k not in ("seconds", "train")},
    )


def test_unibct_dmu_and_bict_resume_exactly(compare_run):
    workdir, _ = compare_run
    runs = upgrade_compare.method_configs(small_compare_config(), str(workdir))
    for method, stage in (("unibct", "new"), ("dmu", "new"), ("bict", "forward")):
        sub, path = runs[method]
        kill_and_resume(
            workdir / method, (stage,), lambda s=sub, p=path: upgrade.train_and_evaluate(s, p)
        )
