"""Which scoring kernel a search runs: chosen per backend, and per CPU by measurement.

Every kernel of `bebrjax.search.scoring.KERNELS` computes the same integers,
so the choice changes speed only. "auto" resolves to:

  * on GPU/TPU: "matmul" (int8 products on tensor cores / the MXU);
  * on CPU: the fastest of the xor-popcount kernels ("popcount",
    "unrolled", "swar", "csa") for the index's code shape, measured once on
    this machine and remembered. Their speed depends on the CPU: with a
    vector popcount (AVX-512 VPOPCNTDQ) one reduction per plane pair is
    hard to beat; on AVX2 alone, where XLA emulates popcount with byte
    shuffles, carry-save adders or word-by-word sums measured up to ~1.5x
    faster, and which wins also depends on m and u.

The measurement scores a synthetic block (4096 documents, 128 queries of
the index's u) with each candidate, best of 3 runs after compiling, about a
second per code shape. Results are cached in memory and in a JSON file
(`$BEBRJAX_KERNEL_CACHE`, default ~/.cache/bebrjax/kernels.json) keyed by
CPU model, jax version and code shape. `$BEBRJAX_KERNEL` names a kernel for
"auto" to resolve to instead, with no measurement (e.g. for repeatable
benchmarks or tests).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from bebrjax.search import scoring
from bebrjax.search.codes import num_words

CPU_KERNELS = ("popcount", "unrolled", "swar", "csa")
_UNROLLED_MAX_WORDS = 64  # word-by-word kernels past this width would compile huge loops
_CHOSEN: dict[str, str] = {}


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check(kernel: str) -> str:
    """`kernel` if it is "auto" or a known kernel.

    Raises:
      ValueError: naming the kernel and the choices.
    """
    if kernel != "auto" and kernel not in scoring.KERNELS:
        raise ValueError(
            f"kernel={kernel!r}: expected 'auto' or one of {', '.join(scoring.KERNELS)}"
        )
    return kernel


def resolve(kernel: str, m: int, planes: int, metric: str) -> str:
    """The kernel to run for codes of width m with `planes` stored planes.

    Args:
      kernel: "auto" or a kernel name (returned as it is).
      m: code width.
      planes: the stored planes (U+1); queries are measured with as many.
      metric: "ip" or "hamming".
    """
    if kernel != "auto":
        return kernel
    forced = os.environ.get("BEBRJAX_KERNEL")
    if forced:
        return check(forced)
    if jax.default_backend() != "cpu":
        return "matmul"
    if num_words(m) > _UNROLLED_MAX_WORDS:
        return "popcount"
    key = f"{cpu_name()} | jax {jax.__version__} | m={m} planes={planes} {metric}"
    if key not in _CHOSEN:
        cached = _read_cache()
        if cached.get(key) not in CPU_KERNELS:
            cached[key] = _fastest(m, planes, metric)
            _write_cache({**_read_cache(), key: cached[key]})
        _CHOSEN[key] = cached[key]
    return _CHOSEN[key]


def _fastest(m: int, planes: int, metric: str) -> str:
    """The CPU kernel that scores a synthetic block fastest (best of 3 runs each)."""
    rng = np.random.default_rng(0)
    words = num_words(m)
    block = {
        "planes": [
            jnp.asarray(rng.integers(0, 2**32, (32, words, 128), dtype=np.uint32))
            for _ in range(planes)
        ],
        "scale": jnp.ones((32, 128), jnp.float32),
    }
    queries = {
        "words": jnp.asarray(rng.integers(0, 2**32, (128, planes, words), dtype=np.uint32)),
        "ints": jnp.zeros((128, m), jnp.int8),
    }
    times = {}
    for kernel in CPU_KERNELS:
        fn = jax.jit(
            lambda q, b, kernel=kernel: scoring.code_scores(
                q, b, m=m, metric=metric, kernel=kernel
            ).max(-1)
        )
        fn(queries, block).block_until_ready()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            fn(queries, block).block_until_ready()
            best = min(best, time.perf_counter() - start)
        times[kernel] = best
    return min(times, key=times.get)


def _cache_path() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "bebrjax", "kernels.json")
    return os.environ.get("BEBRJAX_KERNEL_CACHE", default)


def _read_cache() -> dict:
    try:
        with open(_cache_path()) as f:
            cached = json.load(f)
        return cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cached: dict) -> None:
    """Writes the cache whole (temp file, then rename); an unwritable place is skipped."""
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kernels-", dir=os.path.dirname(path) or ".")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(cached, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
