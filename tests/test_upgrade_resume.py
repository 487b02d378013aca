"""Exact resume of the upgrade stages: a run killed after a checkpoint ends as if it had not been.

A finished run's last checkpoint of a stage is removed, with every results
file (what a kill between two checkpoints leaves), and the run is started
again: it resumes from the checkpoint before, and its final parameters and
results equal the uninterrupted run's. UniBCT resumes with the refined
prototypes of its checkpoint, DMU with its joint model and psi, BiCT in its
forward stage, and (in test_upgrade.py) a sequence in its last step.
"""

import pytest
from conftest import kill_and_resume, small_compare_config

from bebrjax.trainers import upgrade
from bebrjax.trainers.upgrade import compare

pytestmark = pytest.mark.slow  # trains the comparison's methods


def test_unibct_dmu_and_bict_resume_exactly(compare_run):
    workdir, _ = compare_run
    runs = compare.method_configs(small_compare_config(), str(workdir))
    for method, stage in (("unibct", "new"), ("dmu", "new"), ("bict", "forward")):
        sub, path = runs[method]
        kill_and_resume(
            workdir / method, (stage,), lambda s=sub, p=path: upgrade.train_and_evaluate(s, p)
        )
