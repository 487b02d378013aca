r"""Fusion benchmark: version-aware search of a half-backfilled index against a one-version search.

    python -m bebrjax.benchmarks.fusion              # N = 1,000,000, m = 384, u = 1, 1000 queries
    python -m bebrjax.benchmarks.fusion --n 100000 --queries 200 --repeats 1     # a quicker look

An index of N random codes of version "old" (u = 1) has a seeded random half
replaced by "new" codes (u = 1), as in the middle of a backfill. Rows, all
over the same index and kernel ("auto" resolved once, `bebrjax.search.kernels`):
  * single-version search: `BinaryIndex.search` with the new model's queries;
  * version-aware, 2 query models: `search_fused` with old and new queries,
    old documents scored by both models, new documents by the new one;
  * version-aware, 1 query model: `search_fused` with the new queries only
    (the fixed cost of fusion: per-version coefficients and offsets).
Each timing is the best of `--repeats` full passes over the queries after a
warm-up (compiling) call, the rows taking turns (`search.best_times`). The
target is a 2-model search at most 2.2x the single-version time (it scores
every document twice). A check, not timed, compares the ids of a fused
search with the new model alone (alpha 1, beta 0) to `BinaryIndex.search`.
It prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import jax
import numpy as np

from bebrjax.benchmarks.search import best_times
from bebrjax.report import table
from bebrjax.search import BinaryIndex, kernels, scoring
from bebrjax.search.fusion import Fusion, search_fused

U = 1
TARGET = 2.2  # the 2-model fused search's time over the single-version search's, at most
CHUNK = 65536  # codes generated, packed and stored at a time (bounds the host's temporaries)
SINGLE, FUSED2, FUSED1 = (
    "single-version search (new queries)",
    "version-aware, 2 query models",
    "version-aware, 1 query model",
)


def random_planes(rng: np.random.Generator, n: int, m: int, planes: int) -> np.ndarray:
    """Uniformly random int8 bit planes [n, planes, m] of +-1."""
    bits = rng.integers(0, 2, size=(n, planes, m), dtype=np.int8)
    return 1 - 2 * bits


def mixed_index(n: int, m: int, kernel: str, rng: np.random.Generator) -> BinaryIndex:
    """N "old" documents, a random half of them replaced by "new" codes, built a chunk at a time."""
    index = BinaryIndex(m, U, version="old", kernel=kernel)
    for start in range(0, n, CHUNK):
        index.add(random_planes(rng, min(CHUNK, n - start), m, U + 1))
    backfilled = rng.permutation(n)[: n // 2]
    for start in range(0, len(backfilled), CHUNK):
        ids = backfilled[start : start + CHUNK]
        index.replace(ids, random_planes(rng, len(ids), m, U + 1), "new")
    return index


def differing_rows(index: BinaryIndex, new_q: np.ndarray, k: int) -> list[int]:
    """Rows whose ids differ between a fused search of the new model alone and `search`."""
    alone = Fusion(("new",), ("old", "new"), [[1.0, 1.0]], [0.0, 0.0])
    _, fused_ids = search_fused(index, {"new": new_q}, alone, k)
    _, ids = index.search(new_q, k)
    return np.flatnonzero((fused_ids != ids).any(1)).tolist()


def run(n: int, m: int, num_queries: int, k: int, repeats: int, kernel: str, seed: int) -> dict:
    """Builds the mixed index, checks the fused ids, times the rows; returns the figures."""
    kernel = kernels.resolve(kernel, m, U + 1, "ip", BinaryIndex)
    rng = np.random.default_rng(seed)
    index = mixed_index(n, m, kernel, rng)
    old_q = random_planes(rng, num_queries, m, U + 1)
    new_q = random_planes(rng, num_queries, m, U + 1)
    two = Fusion(("old", "new"), ("old", "new"), [[1.0, 0.0], [0.5, 1.2]], [0.1, -0.2])
    one = Fusion(("new",), ("old", "new"), [[0.7, 1.2]], [0.0, 0.1])
    differ = differing_rows(index, new_q[:50], k)
    fns = {
        SINGLE: lambda: index.search(new_q, k),
        FUSED2: lambda: search_fused(index, {"old": old_q, "new": new_q}, two, k),
        FUSED1: lambda: search_fused(index, {"new": new_q}, one, k),
    }
    for fn in fns.values():
        fn()  # compiles
    times = best_times(fns, repeats)
    ratio = times[FUSED2] / times[SINGLE]
    return {
        "cpu": kernels.cpu_name(),
        "backend": jax.default_backend(),
        "kernel": kernel,
        "n": n,
        "m": m,
        "u": U,
        "queries": num_queries,
        "k": k,
        "counts": index.counts(),
        "seconds": {row: round(t, 4) for row, t in times.items()},
        "qps": {row: round(num_queries / t, 1) for row, t in times.items()},
        "fused_cost_ratio": round(ratio, 3),
        "target": TARGET,
        "met": bool(ratio <= TARGET),
        "check_rows_differing": differ,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def report(out: dict) -> str:
    """The timings as a markdown table."""
    seconds, single = out["seconds"], out["seconds"][SINGLE]
    rows = [
        (
            row,
            f"{out['qps'][row]:.0f}",
            f"{1000 * t * 1000 / out['queries']:.0f}",
            f"{t / single:.2f}",
        )
        for row, t in seconds.items()
    ]
    return table(("row", "q/s", "ms / 1000 queries", "time / single"), rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="documents in the index")
    parser.add_argument("--m", type=int, default=384, help="code width")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernel", default="auto", choices=("auto", *scoring.KERNELS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.n, args.m, args.queries, args.k, args.repeats) <= 0 or args.k > args.n:
        parser.error("--n, --m, --queries, --k and --repeats must be positive, k <= n")
    out = run(args.n, args.m, args.queries, args.k, args.repeats, args.kernel, args.seed)
    print(report(out))
    print(
        f"cpu {out['cpu']}; jax backend {out['backend']}; kernel {out['kernel']}; "
        f"N {out['n']} ({out['counts']}), m {out['m']}, u {out['u']}, k {out['k']}; "
        f"peak RSS {out['peak_rss_mib']} MiB"
    )
    differ = out["check_rows_differing"]
    if differ:
        print(f"check: ids differ in rows {differ} of the first 50 queries (near ties)")
    else:
        print("check: ids equal")
    print(
        f"2-model fused / single-version time: {out['fused_cost_ratio']:.2f} "
        f"(target <= {TARGET}: {'met' if out['met'] else 'MISSED'})"
    )
    keys = ("cpu", "backend", "kernel", "n", "m", "u", "queries", "k", "qps")
    keys += ("fused_cost_ratio", "target", "met")
    print(json.dumps({key: out[key] for key in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
