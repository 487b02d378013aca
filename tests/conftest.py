"""Test set-up: 8 forced CPU devices (set before jax is imported) and small configs."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# "auto" would measure the CPU kernels once per code shape (about a second each, and
# the suite has dozens of shapes); every kernel gives identical scores (tested), and
# test_search tests the measurement itself.
os.environ.setdefault("BEBRJAX_KERNEL", "popcount")
# One compilation cache for the session (and its subprocesses): the many tiny runs
# of the suite compile identical programs from distinct jit objects, and a hit
# skips XLA. It starts empty, so no run depends on an earlier one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _CACHE = tempfile.mkdtemp(prefix="bebrjax-jit-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bebrjax import checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interruptible(command: list[str], **kwargs) -> subprocess.Popen:
    """Starts `command` (a Python command line) so that SIGINT reaches it as Ctrl-C would.

    A shell's background job starts its children with SIGINT ignored; the
    command is exec'd from a process that restores the default first.
    """
    restore = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    restore += "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    return subprocess.Popen([sys.executable, "-c", restore, *command[1:]], cwd=ROOT, **kwargs)


def run_train(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    """`python -m bebrjax train ARGS` in a fresh process on one CPU device."""
    return subprocess.run(
        [sys.executable, "-m", "bebrjax", "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "XLA_FLAGS": ""},
        timeout=300,
    )


_BAR = re.compile(r"[\w ]*: *\d+%\|")  # a line of a tqdm progress bar


def run_in_process(*args: str) -> tuple[int, str]:
    """What `bebrjax train ARGS` ends with, run in this process: (exit status, stderr).

    The same parsing and one-line errors as the command, without a fresh
    interpreter each: for the many refusals that end before any work. The
    command in its own process is tested through `run_train`. Progress bars
    are left out of stderr.
    """
    from bebrjax.commands import train

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = train.main(list(args))
        except SystemExit as e:  # argparse's usage error
            status = e.code
    lines = re.split(r"[\r\n]", err.getvalue())
    return status, "".join(f"{line}\n" for line in lines if line and not _BAR.match(line))


# The scoring kernels a search test runs with. The fast tier (`-m "not slow"`) runs
# each such test with the suite's default kernel only; the other kernel's scores
# are compared with it directly there (test_search's kernel-agreement tests).
KERNEL_PARAMS = ["popcount", pytest.param("matmul", marks=pytest.mark.slow)]


def tiny_overrides(steps: int = 12) -> list[str]:
    """Overrides that shrink the demo to a few seconds."""
    return [
        "data.num_pairs=640",
        "data.dim=16",
        "data.latent_dim=4",
        "data.num_clusters=10",
        "model.hidden=32",
        "train.batch_size=64",
        f"train.steps={steps}",
        "train.log_every=1",
        "train.checkpoint_every=4",
        "eval.batch_size=64",
    ]


@pytest.fixture
def tiny_config():
    """The demo config shrunk for tests; extra overrides as arguments."""
    from bebrjax.config import apply_overrides, load_config

    def make(*extra: str, steps: int = 12, arg: str = ""):
        config = load_config(
            os.path.join(ROOT, "configs/bebr/demo.py") + (f":{arg}" if arg else "")
        )
        apply_overrides(config, [*tiny_overrides(steps), *extra])
        return config

    return make


def small_compare_config(*extra: str):
    """configs/upgrade/compare.py shrunk to 40 classes and 120 steps, on one device."""
    from bebrjax.config import apply_overrides, load_config

    config = load_config(os.path.join(ROOT, "configs/upgrade/compare.py"))
    apply_overrides(
        config,
        [
            "train.steps=120",
            "data.num_classes=40",
            "data.per_class=40",
            "new.model.backbone_args.widths=(256,)",
            "mesh.num_devices=1",
            "train.log_every=50",
            "train.checkpoint_every=60",  # a checkpoint to resume from (test_upgrade_resume)
            *extra,
        ],
    )
    with config.unlocked():
        config.methods = ("independent", "l2", "bct", "unibct", "dmu", "bict")
    return config


@pytest.fixture(scope="session")
def compare_run(tmp_path_factory):
    """(workdir, results) of the small comparison, trained once for every test that reads it."""
    from bebrjax.trainers.upgrade import compare

    workdir = tmp_path_factory.mktemp("compare")
    return workdir, compare.train_and_evaluate(small_compare_config(), str(workdir))


@pytest.fixture(scope="session")
def binarizer_run(tmp_path_factory):
    """(workdir, results) of a tiny binarizer run trained on the 8 forced devices."""
    from bebrjax.config import apply_overrides, load_config
    from bebrjax.trainers import binarizer

    config = load_config(os.path.join(ROOT, "configs/bebr/demo.py"))
    apply_overrides(config, [*tiny_overrides(steps=8), "eval.hash=false"])
    workdir = tmp_path_factory.mktemp("binarizer")
    return workdir, binarizer.train_and_evaluate(config, str(workdir))


def compatible_overrides(steps: int = 10) -> list[str]:
    """Overrides that shrink configs/bebr/compatible.py (synthetic) to seconds per stage."""
    data = [
        f"data.{v}.{k}={x}"
        for v in ("old", "new")
        for k, x in (("num_pairs", 640), ("dim", 16), ("latent_dim", 4), ("num_clusters", 10))
    ]
    stages = [
        f"{s}.{k}"
        for s in ("old", "independent", "new")
        for k in ("model.hidden=32", "train.batch_size=64", f"train.steps={steps}")
    ]
    return [*data, *stages, "eval.batch_size=64", "backfill.points=5", "mesh.num_devices=1"]


@pytest.fixture(scope="session")
def compatible_run(tmp_path_factory):
    """(workdir, results) of a tiny compatible-codes run, trained once on the 8 forced devices."""
    from bebrjax.config import apply_overrides, load_config
    from bebrjax.trainers import compatible

    config = load_config(os.path.join(ROOT, "configs/bebr/compatible.py"))
    apply_overrides(config, compatible_overrides())
    workdir = tmp_path_factory.mktemp("compatible")
    return workdir, compatible.train_and_evaluate(config, str(workdir))


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
