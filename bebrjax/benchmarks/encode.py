r"""Encoding benchmark: `bebrjax encode` end to end against the bare forward pass.

    python -m bebrjax.benchmarks.encode                     # 2M x 384 float16, d = m = 384, u = 1
    python -m bebrjax.benchmarks.encode --rows 200000       # a quicker look
    python -m bebrjax.benchmarks.encode --workdir W         # your binarizer (its d sets the width)

It writes a synthetic corpus of `--rows` float16 rows to an .npy file
(`--dir`, default a temporary directory), then in one run:
  * end to end: the `encode` command in a child process (reading the file,
    normalizing, encoding, packing, writing the index), its rows/s from the
    command's own summary and its peak RSS from the kernel (ru_maxrss,
    counted from a bare launcher process);
  * the bare forward: the same jit'd encoder on in-memory float32 batches of
    the same size, already in memory, timed over `--forward-batches` batches.
Without `--workdir`, a binarizer of the reference shape is trained for a few
steps on synthetic 384-d pairs first (its speed, not its quality, is
measured). Targets: peak RSS < 2 GB, end to end >= 0.67x the bare forward.
It prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from bebrjax import report, sharding
from bebrjax.inference import load
from bebrjax.search.kernels import cpu_name

RSS_TARGET_MB, RATIO_TARGET = 2000, 0.67


def write_corpus(
    path: str,
    rows: int,
    dim: int,
    seed: int,
    clusters: int = 0,
    spread: float = 0.25,
    chunk: int = 262144,
) -> None:
    """Random float16 rows [rows, dim] written chunk by chunk to the .npy file `path`.

    With `clusters` > 0 each row is one of that many random centres plus
    Gaussian noise `spread` times the centres' scale (a gallery with
    neighbourhoods, where an inverted index has lists to find); else plain
    Gaussian rows.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), np.float32) if clusters else None
    with open(f"{path}.tmp", "wb") as f:  # renamed when whole: a rerun never reuses a torn file
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (rows, dim)}
        )
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.standard_normal((n, dim), np.float32)
            if centres is not None:
                x = centres[rng.integers(0, clusters, n)] + spread * x
            f.write(x.astype(np.float16).tobytes())
    os.replace(f"{path}.tmp", path)


def train_reference(workdir: str, dim: int) -> None:
    """A binarizer of the reference shape (d = m = dim, u = 1), trained for 20 steps."""
    from bebrjax.config import apply_overrides, load_config
    from bebrjax.trainers import binarizer

    here = os.path.dirname(os.path.abspath(__file__))
    config = load_config(os.path.join(here, "..", "..", "configs", "bebr", "demo.py"))
    apply_overrides(
        config,
        [f"data.dim={dim}", "data.num_pairs=4096", "train.steps=20", "eval.hash=false"],
    )
    binarizer.train_and_evaluate(config, workdir)


def bare_forward(workdir: str, batch_size: int, batches: int, seed: int) -> float:
    """Rows/s of the jit'd encoder on in-memory batches (best of two passes)."""
    encoder = load(workdir).encoder
    apply = sharding.sharded_apply(encoder.forward, encoder.mesh, batch_size)
    rng = np.random.default_rng(seed)
    data = [
        rng.standard_normal((apply.batch_size, *encoder.input_shape), np.float32)
        for _ in range(batches)
    ]
    jax.block_until_ready(apply(encoder.variables, data[0]))  # compile
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        outs = [apply(encoder.variables, x) for x in data]
        jax.block_until_ready(outs)
        best = min(best, time.perf_counter() - start)
    return batches * apply.batch_size / best


# Runs a command and prints its peak RSS in KiB. The launcher is a bare Python so
# that the child's ru_maxrss is its own: a child forked from this process (which
# holds a trained model and test batches) would start counting from its pages.
_LAUNCH = (
    "import resource, subprocess, sys; "
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(p.stderr); sys.stdout.write(p.stdout); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)"
)


def measured(command: list[str]) -> tuple[str, float, float]:
    """Runs `command`; (its stdout, its peak RSS in MB, its wall seconds).

    Raises:
      RuntimeError: with the command's last line of stderr when it fails.
    """
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCH, *command], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{' '.join(command[1:4])} failed: {last}")
    *out, peak_kib = proc.stdout.strip().splitlines()
    return "\n".join(out), int(peak_kib) / 1024, seconds


def end_to_end(workdir: str, corpus: str, index: str, batch_size: int) -> tuple[dict, float]:
    """(the encode command's summary, its peak RSS in MB)."""
    command = [sys.executable, "-m", "bebrjax", "encode", "--workdir", workdir, "--input", corpus]
    command += ["--index", index, "--batch-size", str(batch_size), "--overwrite"]
    out, peak_mb, _ = measured(command)
    return json.loads(out.splitlines()[-1]), peak_mb


def _verdict(good: bool) -> str:
    return "met" if good else "MISSED"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="corpus rows")
    parser.add_argument("--dim", type=int, default=384, help="width of the trained reference")
    parser.add_argument("--workdir", help="a trained binarizer run (default: train one)")
    parser.add_argument("--dir", help="where the corpus and index go (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--forward-batches", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.rows, args.dim, args.batch_size, args.forward_batches) <= 0:
        parser.error("--rows, --dim, --batch-size and --forward-batches must be positive")
    root = args.dir or tempfile.mkdtemp(prefix="bebrjax_encode_bench_")
    os.makedirs(root, exist_ok=True)
    workdir = args.workdir or os.path.join(root, "binarizer")
    if not args.workdir and not os.path.isfile(os.path.join(workdir, "results.json")):
        train_reference(workdir, args.dim)
    dim = load(workdir).dim
    corpus = os.path.join(root, f"corpus_{args.rows}x{dim}.npy")
    if not os.path.isfile(corpus):
        write_corpus(corpus, args.rows, dim, args.seed)
    bare = bare_forward(workdir, args.batch_size, args.forward_batches, args.seed)
    summary, peak_mb = end_to_end(workdir, corpus, os.path.join(root, "index"), args.batch_size)
    ratio = summary["rows_per_sec"] / bare
    out = {
        "cpu": cpu_name(),
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "rows": args.rows,
        "dim": dim,
        "m": summary["m"],
        "u": summary["u"],
        "corpus_gb": round(os.path.getsize(corpus) / 1e9, 2),
        "batch_size": args.batch_size,
        "end_to_end_rows_per_sec": summary["rows_per_sec"],
        "end_to_end_seconds": summary["seconds"],
        "bare_forward_rows_per_sec": round(bare, 1),
        "ratio": round(ratio, 3),
        "peak_rss_mb": round(peak_mb, 1),
    }
    head = ["measure", "value", "target"]
    rows = [
        ["corpus", f"{args.rows:,} x {dim} float16 ({out['corpus_gb']} GB)", ""],
        ["code", f"m = {out['m']}, u = {out['u']} ({out['m'] * (out['u'] + 1)} bits)", ""],
        ["end to end (encode command)", f"{out['end_to_end_rows_per_sec']:,.0f} rows/s", ""],
        ["bare jit'd forward (in memory)", f"{out['bare_forward_rows_per_sec']:,.0f} rows/s", ""],
        [
            "end to end / bare",
            f"{ratio:.2f}x",
            f">= {RATIO_TARGET} ({_verdict(ratio >= RATIO_TARGET)})",
        ],
        [
            "peak RSS (encode command)",
            f"{peak_mb:,.0f} MB",
            f"< {RSS_TARGET_MB} ({_verdict(peak_mb < RSS_TARGET_MB)})",
        ],
    ]
    print(f"{out['cpu']}, {out['devices']}, batch {args.batch_size}")
    print(report.table(head, rows))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
