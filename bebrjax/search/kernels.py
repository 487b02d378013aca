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

The measurement runs a real search of a synthetic gallery under each
candidate (`_fastest`), a few seconds per code shape. Results are cached
in memory and in a JSON file (`$BEBRJAX_KERNEL_CACHE`, default
~/.cache/bebrjax/kernels.json) keyed by CPU model, jax version and code
shape. `$BEBRJAX_KERNEL` names a kernel for
"auto" to resolve to instead, with no measurement (e.g. for repeatable
benchmarks or tests).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

from bebrjax.search import scoring
from bebrjax.search.codes import num_words

CPU_KERNELS = ("popcount", "unrolled", "swar", "csa")
_UNROLLED_MAX_WORDS = 64  # word-by-word kernels past this width would compile huge loops
_CALIBRATION_DOCS = 3 * 65536  # three default blocks (see `_fastest`)
_CHOSEN: dict[str, str] = {}


@functools.cache
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


def resolve(kernel: str, m: int, planes: int, metric: str, index_type: type) -> str:
    """The kernel to run for codes of width m with `planes` stored planes.

    Args:
      kernel: "auto" or a kernel name (returned as it is).
      m: code width.
      planes: the stored planes (U+1); queries are measured with as many.
      metric: "ip" or "hamming".
      index_type: the index whose search is measured (`BinaryIndex`), built
        as `index_type(m, u, metric, kernel=...)`.
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
            cached[key] = _fastest(m, planes, metric, index_type)
            _write_cache({**_read_cache(), key: cached[key]})
        _CHOSEN[key] = cached[key]
    return _CHOSEN[key]


def _fastest(m: int, planes: int, metric: str, index_type: type) -> str:
    """The CPU kernel under which a real search of a synthetic gallery is fastest.

    The whole search is timed (three default blocks of 65536 random codes,
    a default batch of 512 queries of the same u, k = 10, timed once after
    compiling), not the kernel alone: how XLA fuses a kernel with the
    per-group maxima after it, and the gallery's size, changed the order
    (e.g. SWAR fastest alone but 4x slower inside the search at m = 128;
    carry-save adders level with popcount on one block, 2x slower on six).
    """
    print(
        f"bebrjax: measuring the CPU search kernels for m={m}, u={planes - 1} "
        "(once per machine and code shape)",
        file=sys.stderr,
    )
    rng = np.random.default_rng(0)
    docs = (1 - 2 * rng.integers(0, 2, (_CALIBRATION_DOCS, planes, m))).astype(np.int8)
    queries = docs[rng.integers(0, len(docs), 512)]
    times = {}
    for kernel in CPU_KERNELS:
        index = index_type(m, planes - 1, metric, kernel=kernel)
        index.add(docs)
        index.search(queries, 10)  # compiles
        start = time.perf_counter()
        index.search(queries, 10)
        times[kernel] = time.perf_counter() - start
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
