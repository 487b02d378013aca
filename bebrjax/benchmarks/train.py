r"""Training benchmark: steps/s of the real trainers on 1 and 2 local processes, with FLOP/s.

    python -m bebrjax.benchmarks.train                          # both models, ~3 min on 2 cores
    python -m bebrjax.benchmarks.train --quick                  # one measured interval each
    python -m bebrjax.benchmarks.train --models binarizer       # one model
    python -m bebrjax.benchmarks.train --devices-per-process 2  # 2 x 2 against 1 x 4

Models (the real configs, their step unchanged):
  * binarizer: configs/bebr/demo.py at the reference shape, d = m = 512,
    u = 1 (model.loops=1), hidden 2048, batch 2048 pairs, pair loss only, SGD;
  * upgrade: configs/upgrade/bct.py, its "new" stage (the new model against
    the frozen old classifier, batch 256).
Each runs as the real command in a child process, with the same total
device count both ways:
  * 1 process x 2D devices: `bebrjax train ...` with
    XLA_FLAGS=--xla_force_host_platform_device_count=2D;
  * 2 processes x D devices: `launch/multiprocess.sh 2 ...` with
    DEVICES_PER_PROCESS=D (CPU devices, jax.distributed over gloo).
steps/s comes from the run's metrics.jsonl (`steps_per_sec` per log
interval): of `train.steps` = L x (k + 1) + 1, the first interval (it
compiles) and the last one step (the final checkpoint) are left out, and
the k intervals between are pooled. FLOP/step is XLA's cost analysis of
the same jit'd step built in this process on one device, for the global
batch. The peak is nominal: on CPU, FLOP/cycle/core from the vector flags
x cores x clock; on GPU, a table of dense fp32 peaks. It prints a table
and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bebrjax import report, sharding
from bebrjax import workdir as wd
from bebrjax.config import apply_overrides, load_config
from bebrjax.search.kernels import cpu_name

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARIZER = [
    *("data.dim=512", "data.num_pairs=4096", "model.code_dim=512", "model.loops=1"),
    *("model.hidden=2048", "loss.pair_weight=1", "loss.distill_weight=0", "optim.name=sgd"),
    *("train.batch_size=2048", "eval.hash=false", "eval.trained_hash=false"),
    "eval.float_baseline=false",
]
# name: (config file, overrides, stage directory ("" = the workdir), log_every L).
MODELS = {
    "binarizer": ("configs/bebr/demo.py", BINARIZER, "", 2),
    "upgrade": ("configs/upgrade/bct.py", [], "new", 50),
}
# Dense fp32 peaks (TFLOP/s) per GPU, by a substring of jax's device_kind.
GPU_FP32_TFLOPS = {"H200": 67.0, "H100": 67.0, "A100": 19.5, "L4": 30.3, "A10": 31.2, "V100": 15.7}


def cpu_peak() -> tuple[float | None, str]:
    """(nominal fp32 peak FLOP/s of the CPUs this process may use, how it was computed)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None, "n/a (no /proc/cpuinfo)"
    pairs = (ln.split(":", 1) for ln in info.splitlines() if ":" in ln)
    fields = {key.strip(): value.strip() for key, value in pairs}
    flags = set(fields.get("flags", "").split())
    if "avx512f" in flags:
        per_cycle, why = 64, "avx512f: 64 fp32 FLOP/cycle/core (nominal, assumes 2 FMA units)"
    elif {"avx2", "fma"} <= flags:
        per_cycle, why = 32, "avx2+fma: 32 fp32 FLOP/cycle/core (nominal, assumes 2 FMA units)"
    else:
        return None, "n/a (no avx2+fma or avx512f flag)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            ghz, clock = int(f.read()) / 1e6, "cpuinfo_max_freq"
    except (OSError, ValueError):
        mhz = fields.get("cpu MHz")
        if mhz is None:
            return None, "n/a (no clock found)"
        ghz, clock = float(mhz) / 1e3, "/proc/cpuinfo 'cpu MHz'"
    peak = per_cycle * cores * ghz * 1e9
    return (
        peak,
        f"{why} x {cores} logical cores x {ghz:.3f} GHz ({clock}) = {peak / 1e9:.1f} GFLOP/s",
    )


def gpu_peak(kind: str, devices: int) -> tuple[float | None, str]:
    """(nominal dense fp32 peak FLOP/s of `devices` GPUs of `kind`, where it comes from)."""
    for name, tflops in GPU_FP32_TFLOPS.items():
        if name in kind:
            return devices * tflops * 1e12, f"{kind}: {tflops} TFLOP/s dense fp32 x {devices}"
    return None, f"n/a ({kind} is not in the table)"


def flop_count(compiled: Any) -> float:
    """The "flops" of a compiled program's cost analysis (a dict, or a list of dicts)."""
    cost = compiled.cost_analysis()
    costs = cost if isinstance(cost, list | tuple) else [cost]
    return float(sum(c.get("flops", 0.0) for c in costs))


def binarizer_flops(config) -> float:
    """FLOPs of one step of the binarizer of `config` on a batch of `train.batch_size` pairs."""
    from bebrjax.optim import make_optimizer
    from bebrjax.trainers.binarizer import build_model
    from bebrjax.trainers.binarizer_step import make_train_step
    from bebrjax.trainers.loop import init_state

    mesh, n, d = sharding.make_mesh(1), config.train.batch_size, config.data.dim
    with config.unlocked():
        config.model.code_dim = config.model.code_dim or d
    model = build_model(config)
    tx, _ = make_optimizer(config.optim, max(config.train.steps, 1))
    state = init_state(model, tx, jnp.zeros((2, d), jnp.float32), config.seed, mesh)
    x = np.zeros((n, d), np.float32)
    ids = np.arange(n, dtype=np.int32)
    batch = {"query": x, "doc": x, "labels": ids, "groups": ids}
    step = make_train_step(model, tx, config.loss, mesh)
    return flop_count(step.lower(state, batch).compile())


def upgrade_flops(config) -> float:
    """FLOPs of one step of an upgrade config's "new" stage (the method against the old model)."""
    from bebrjax.data.upgrade_splits import load_labelled
    from bebrjax.optim import make_optimizer
    from bebrjax.trainers.loop import init_state
    from bebrjax.trainers.upgrade.methods import METHODS
    from bebrjax.trainers.upgrade.models import build
    from bebrjax.trainers.upgrade.step import make_train_step

    method = METHODS[config.method]
    if method.adapter == "joint":
        raise NotImplementedError(f"FLOPs of method {config.method!r} (psi trained jointly)")
    data, _ = load_labelled(config)
    mesh, classes, n = sharding.make_mesh(1), data.num_classes, config.train.batch_size
    x, y = data.x[:n], data.y[:n]
    model, old_model = build(config.new, classes), build(config.old, classes)
    tx, _ = make_optimizer(config.optim, max(config.train.steps, 1))
    example = jnp.zeros((2, *x.shape[1:]), x.dtype)
    state = init_state(model, tx, example, config.seed, mesh)
    if method.old_classifier:
        state["aux"] = {"classifier": jnp.zeros((classes, config.old.model.embedding_dim))}
    old_variables = old_model.init(jax.random.key(0), example, train=False)
    step = make_train_step(model, tx, config, method, mesh, old_model, old_variables)
    # The step is a closure over the frozen old model: lower it inside a jit of its own.
    return flop_count(jax.jit(step).lower(state, {"x": x, "y": y}).compile())


def run_child(
    model: str, processes: int, devices: int, steps: int, log_every: int, root: str
) -> dict[str, Any]:
    """Trains `model` for `steps` steps in a child run; its pooled steps/s, or its error."""
    path, overrides, stage, _ = MODELS[model]
    workdir = os.path.join(root, f"{model}_{processes}x{devices}")
    overrides = [
        *overrides,
        *(f"train.steps={steps}", f"train.log_every={log_every}"),
        f"train.checkpoint_every={steps}",
    ]
    flags = [f"--config.{o}" for o in overrides]
    env = dict(os.environ)
    if processes == 1:
        count = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {count}".strip()
        command = [sys.executable, "-m", "bebrjax", "train", "--config", path, "--workdir", workdir]
    else:
        env.update(DEVICES_PER_PROCESS=str(devices), PYTHON=sys.executable)
        command = ["bash", "launch/multiprocess.sh", str(processes), path, workdir]
    start = time.perf_counter()
    proc = subprocess.run(
        [*command, *flags], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    out = {"seconds": round(time.perf_counter() - start, 1)}
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return {**out, "error": f"exit status {proc.returncode}:\n{tail}"}
    records = wd.read_metrics(os.path.join(workdir, stage))
    # Leave out the first interval (compilation) and a short last one (the final checkpoint).
    kept = [r for r in records[1:] if r["step"] % log_every == 0]
    if not kept:
        return {**out, "error": f"no measured interval in {len(records)} metrics lines"}
    seconds = [log_every / r["steps_per_sec"] for r in kept]
    rates = [r["steps_per_sec"] for r in kept]
    return {**out, "steps_per_sec": len(kept) * log_every / sum(seconds), "intervals": rates}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="binarizer,upgrade", help="comma-separated")
    parser.add_argument("--devices-per-process", type=int, default=1, help="D")
    parser.add_argument("--intervals", type=int, default=3, help="k measured log intervals")
    parser.add_argument("--quick", action="store_true", help="one measured interval")
    parser.add_argument("--dir", help="where the run directories go (default: a temp dir)")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if not set(models) <= set(MODELS):
        parser.error(f"--models: expected some of {', '.join(MODELS)}")
    if min(args.devices_per_process, args.intervals) <= 0:
        parser.error("--devices-per-process and --intervals must be positive")
    k, d = 1 if args.quick else args.intervals, args.devices_per_process
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="bebrjax_train_bench_", dir=args.dir)
    began = time.perf_counter()
    platform, kind = jax.devices()[0].platform, jax.devices()[0].device_kind
    peaks = {"cpu": cpu_peak()}
    if platform != "cpu":  # the 1-process run uses these devices (the launcher is CPU-only)
        peaks[platform] = gpu_peak(kind, jax.device_count())
    head = ["model", "processes x devices", "steps/s", "ms/step", "GFLOP/step"]
    head += ["achieved GFLOP/s", "% of nominal peak"]
    rows, results, errors = [], [], []
    for model in models:
        path, overrides, _, log_every = MODELS[model]
        config = load_config(os.path.join(ROOT, path))
        apply_overrides(config, overrides)
        flops = (binarizer_flops if model == "binarizer" else upgrade_flops)(config)
        layouts = [(1, 2 * d, platform), (2, d, "cpu")]
        for processes, devices, where in layouts:
            if where != "cpu":
                devices = jax.device_count()
            got = run_child(model, processes, devices, log_every * (k + 1) + 1, log_every, root)
            label = f"{processes} x {devices} {where}"
            result = {"model": model, "processes": processes, "devices": devices}
            result.update(platform=where, gflop_per_step=flops / 1e9, **got)
            results.append(result)
            if "error" in got:
                errors.append(f"{model}, {label}: {got['error']}")
                rows.append([model, label, "failed", "", f"{flops / 1e9:.2f}", "", ""])
                continue
            rate, peak = got["steps_per_sec"], peaks[where][0]
            achieved = flops * rate
            share = achieved / peak if peak else None
            result.update(achieved_gflops=achieved / 1e9, peak_fraction=share)
            rows.append(
                [
                    model,
                    label,
                    f"{rate:.2f}",
                    f"{1e3 / rate:.1f}",
                    f"{flops / 1e9:.2f}",
                    f"{achieved / 1e9:.1f}",
                    f"{100 * share:.1f}%" if share else "n/a",
                ]
            )
    wall = time.perf_counter() - began
    for error in errors:
        print(f"FAILED {error}", file=sys.stderr)
    print(f"{cpu_name()}; measured: {k} interval(s) per run after the first; wall {wall:.0f} s")
    print(report.table(head, rows))
    for where, (_, how) in peaks.items():
        print(f"nominal peak ({where}): {how}")
    out = {"cpu": cpu_name(), "platform": platform, "device_kind": kind, "intervals": k}
    out.update(peaks={w: p for w, (p, _) in peaks.items()}, wall_s=round(wall, 1), runs=results)
    print(json.dumps(out))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
