"""The quantizer benchmark's speed rows (`bebrjax.benchmarks.quantizers`): random data, no training.

`--n` random unit vectors of the data's width: bebrjax's codes are sign(x)
(u = 0) and the 2-bit recurrent code `query_planes(x, 2)` (u = 1), its
asymmetric queries `query_planes(q, 4)`; every exhaustive method, bebrjax's
and faiss's, is timed at k = K.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from bebrjax.benchmarks.search import best_times
from bebrjax.evaluators.retrieval import unit_rows
from bebrjax.models.binarizer import query_planes
from bebrjax.search import BinaryIndex, kernels

K = 10
CHUNK = 65536  # gallery vectors generated and added at a time


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return unit_rows(rng.standard_normal((n, d), dtype=np.float32))


def _signs(x: np.ndarray) -> np.ndarray:
    """The one-plane code sign(x): int8 [N, 1, d]."""
    return np.where(x >= 0, 1, -1).astype(np.int8)[:, None, :]


def _planes(x: np.ndarray, bits: int) -> np.ndarray:
    return np.asarray(query_planes(jnp.asarray(x), bits))


def speed_rows(
    faiss, d: int, n: int, num_queries: int, repeats: int, seed: int
) -> tuple[list[dict], dict]:
    """Times every exhaustive method at k = K on random unit vectors; (rows, setup)."""
    ip, rng = faiss.METRIC_INNER_PRODUCT, np.random.default_rng(seed)
    kernel = {u: kernels.resolve("auto", d, u + 1, "ip", BinaryIndex) for u in (0, 1)}
    flat = {
        "faiss IndexFlatIP": ("float", "float32", faiss.IndexFlatIP(d)),
        "faiss IndexScalarQuantizer 8-bit": (
            "faiss int8 SQ",
            "float32",
            faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, ip),
        ),
    }
    for nb in (1, 2):
        index = faiss.IndexRaBitQ(d, ip, nb)
        index.qb = 4
        flat[f"faiss IndexRaBitQ {nb}-bit"] = ("faiss RaBitQ", "4-bit", index)
    for nb in (1, 2):
        index = faiss.IndexRaBitQFastScan(d, ip, 32, nb)
        flat[f"faiss IndexRaBitQFastScan {nb}-bit"] = (
            "faiss RaBitQFastScan",
            f"{index.qb}-bit",
            index,
        )
    signs = faiss.IndexBinaryFlat(d)
    codes = {u: BinaryIndex(d, u, kernel=kernel[u]) for u in (0, 1)}
    for start in range(0, n, CHUNK):
        x = _unit(rng, min(CHUNK, n - start), d)
        for _, _, index in flat.values():
            if not index.is_trained:
                index.train(x)
            index.add(x)
        signs.add(np.packbits(x > 0, axis=1))
        codes[0].add(_signs(x))
        codes[1].add(_planes(x, 2))
    q = _unit(rng, num_queries, d)
    q_signs, q2, q4 = np.packbits(q > 0, axis=1), _planes(q, 2), _planes(q, 4)
    cases: dict[str, tuple[str, str, float, Callable[[], object]]] = {
        name: (
            family,
            query,
            index.code_size,
            lambda index=index: index.search(q, K),
        )
        for name, (family, query, index) in flat.items()
    }
    cases["faiss IndexBinaryFlat (signs)"] = (
        "faiss sign Hamming",
        "1-bit (sign)",
        d / 8,
        lambda: signs.search(q_signs, K),
    )
    for u, qs in ((0, _signs(q)), (1, q2)):
        index = codes[u]
        cases[f"bebrjax u={u} symmetric"] = (
            "bebrjax symmetric",
            f"{u + 1}-bit code",
            index.bytes_per_doc,
            lambda index=index, qs=qs: index.search(qs, K),
        )
        cases[f"bebrjax u={u} + 4-bit queries"] = (
            "bebrjax asymmetric",
            "4-bit",
            index.bytes_per_doc,
            lambda index=index: index.search(q4, K),
        )
    warm = q[: min(50, num_queries)]
    for name, (_, _, _, fn) in cases.items():
        if name.startswith("bebrjax"):
            fn()  # compiles
        elif name in flat:
            flat[name][2].search(warm, K)
        else:
            signs.search(q_signs[: len(warm)], K)
    times = best_times({name: case[3] for name, case in cases.items()}, repeats)
    rows = [
        {
            "family": family,
            "method": name,
            "query": query,
            "bytes": float(nbytes),
            "qps": round(num_queries / times[name], 1),
            "seconds": round(times[name], 4),
        }
        for name, (family, query, nbytes, _) in cases.items()
    ]
    setup = {
        "n": n,
        "d": d,
        "queries": num_queries,
        "k": K,
        "repeats": repeats,
        "kernels": {f"u{u}": k for u, k in kernel.items()},
    }
    return rows, setup
