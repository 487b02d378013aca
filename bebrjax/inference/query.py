"""Search a saved index with queries encoded by a trained binarizer or a bundle (`bebrjax search`).

    ids, scores = search_index("gallery.bebr", "queries.npy", k=10, workdir=W)
    ids, scores = search_versions("gallery.bebr", {"old": x_old, "new": x_new}, k=10, plan=P)

`search_index` encodes float queries [Q, d] (an array, or an .npy, an .npz
key or a directory of <key>.npy) with the model of a workdir or an exported
bundle: the one that encoded the index's documents, or a compatible newer
version (`configs/bebr/compatible.py`) whose codes search an old or a
mixed-version index; each document is scored with the code of its own
version, exactly (SDC, ties to the lower id). A query code wider than the
index's is compared on the index's width (the shared prefix). An IVF index
(`bebrjax ivf`) is searched in each query's `nprobe` nearest lists, by
default the number it stores (`open_for_search`; `nprobe="all"`: every
document, exhaustively); `rescore_docs` ranks the top k x `oversample`
again by the float inner product with the documents' float embeddings
(only those rows are read), `asymmetric` by the float query against the
decoded codes (see `bebrjax.search.rescore`). `engine="faiss"` serves an index of u = 0
codes, flat or IVF, with faiss's binary kernels, the same answer
(`bebrjax.search.handoff.FaissSearch`).

`search_versions` is version-aware search (`bebrjax.search.fusion`) under a
scoring plan (`bebrjax fit-plan`, or a compatible run's
W/plans/<policy>.json) or a bundle exported with one: each query model
encodes its own queries (old and new encoders take different embeddings),
loaded from the run the plan records, and every document is scored by the
queries of the models that score its version, calibrated and fused,
exactly.

On N processes (`bebrjax.distributed`) `load_index` gives each process its
own part of the index's documents (`search.sharded`), and the answer is the
one a single process gives, bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator, Mapping

import jax
import numpy as np

from bebrjax.data.rows import read_ids
from bebrjax.errors import DataError, FaissMissingError, PlanError
from bebrjax.inference.corpus import as_binarizer, open_embeddings, read_checked
from bebrjax.inference.plans import query_models
from bebrjax.search import BinaryIndex, IVFIndex, ShardedIndex, handoff, storage
from bebrjax.search import plan as plan_lib
from bebrjax.search.codes import MAX_QUERY_PLANES
from bebrjax.search.fusion import search_fused
from bebrjax.search.plan import ScoringPlan
from bebrjax.search.rescore import rescore
from bebrjax.serving import load_bundle

EXHAUSTIVE = "all"  # as nprobe: every document, whatever inverted lists the index has


def read_queries(path: str, key: str | None, dim: int) -> np.ndarray:
    """The query embeddings [Q, dim] at `path`, float32, checked as `encode` checks."""
    source = open_embeddings(path, key, dim)
    try:
        return read_checked(source, 0, len(source))
    finally:
        source.close()


def read_relevant(spec: str, num_docs: int) -> np.ndarray:
    """The relevant doc id(s) of each query, [Q] or [Q, R], from `PATH[:key]` (key "relevant").

    Raises:
      DataError: naming the file when it is missing, or not 1-D integers in
        [0, num_docs) (or [Q, R], padded with -1).
    """
    return read_ids(spec, num_docs, key="relevant", what="one per query", several=True)


def search_index(
    index: str | BinaryIndex | ShardedIndex,
    queries: str | np.ndarray,
    *,
    k: int,
    workdir: str | None = None,
    bundle: str | None = None,
    key: str | None = "query",
    batch_size: int = 8192,
    nprobe: int | str | None = None,
    rescore_docs: str | None = None,
    asymmetric: bool = False,
    oversample: int = 4,
    query_bits: int | None = None,
    engine: str = "bebrjax",
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encodes `queries` with the model of `workdir` or `bundle` and searches `index`.

    Args:
      index: a saved index directory, or an open `BinaryIndex` or `IVFIndex`
        (or `ShardedIndex`, on several processes).
      queries: float embeddings [Q, d], or the file holding them (see `open_rows`).
      k: results per query.
      workdir: the binarizer run that made the index (or give `bundle`).
      bundle: its exported bundle (or give `workdir`).
      key: the queries' array name in an .npz or a directory.
      batch_size: rows per encoded batch.
      nprobe: search an IVF index's `nprobe` nearest lists; None: the
        index's default, "all": every document (see `open_for_search`).
      rescore_docs: the documents' float embeddings (.npy, row i of document
        i): rank the codes' top k x oversample again by the float inner
        product with the float queries (`bebrjax.search.rescore`).
      asymmetric: rank that shortlist by the float query against the decoded
        codes instead (queries of the codes' width m).
      oversample: the shortlist's size over k when rescoring.
      query_bits: the query precision (0: codes; B: the model's pre-sign
        output at B bits); None: the index's, as it was evaluated.
      engine: "bebrjax" (XLA) or "faiss" (u = 0 codes, code queries, one
        process: faiss's binary kernels, the same answer).
      timings: when given, gets the wall seconds of encoding the queries
        ("encode_seconds") and of the search ("search_seconds", rescoring
        and the first call's compilation included).

    Returns:
      (ids int64 [Q, k], scores float32 [Q, k]), best first, ties to the lower id.

    Raises:
      DataError, LoadError, BundleError, IndexFormatError: naming the input.
    """
    if (workdir is None) == (bundle is None):
        raise DataError("give the model as exactly one of workdir and bundle")
    if batch_size <= 0:
        raise DataError(f"batch size {batch_size}: must be > 0")
    if bundle is not None:
        model = load_bundle(bundle)
        dim, model_shape = model.input_shape[0], model.output_shape
    else:
        model = as_binarizer(workdir)
        dim = model.dim
        model_shape = (model.loops + 1, model.code_dim)
    if rescore_docs is not None and asymmetric:
        raise DataError("rescore with the float documents or asymmetrically, not both")
    index, nprobe = open_for_search(index, nprobe)
    if asymmetric and isinstance(index, ShardedIndex):
        raise DataError(
            "--asymmetric decodes the shortlist's codes, which lie on several processes; "
            "rescore with --rescore DOCS.npy, or search on one process"
        )
    if model_shape[1] < index.m:
        raise DataError(
            f"the index holds codes of width m={index.m}; the model makes narrower ones "
            f"(m={model_shape[1]}): queries must be at least as wide as the documents"
        )
    if not 1 <= k <= index.ntotal:
        raise DataError(f"k={k} must be in [1, {index.ntotal}] (the documents in the index)")
    if isinstance(queries, str):
        queries = read_queries(queries, key, dim)
    bits = served_bits(index) if query_bits is None else query_bits
    if not 0 <= bits <= MAX_QUERY_PLANES:
        raise DataError(f"query bits {bits}: must be in [0, {MAX_QUERY_PLANES}] (0: codes)")
    if engine == "faiss":
        index = faiss_engine(index, asymmetric=asymmetric, bits=bits)
    with _timed(timings, "encode_seconds"):
        planes = model.encode_query(queries, batch_size, bits=bits)
    probing = {} if nprobe is None else {"nprobe": nprobe}
    try:
        with _timed(timings, "search_seconds"):
            if rescore_docs is None and not asymmetric:
                scores, ids = index.search(planes, k, **probing)
            else:
                scores, ids = rescore(
                    index, planes, queries, k, docs=rescore_docs, oversample=oversample, **probing
                )
    except ValueError as e:  # the arguments' values, named by the search
        raise DataError(str(e)) from None
    return ids, scores


def search_versions(
    index: str | BinaryIndex | ShardedIndex,
    queries: Mapping[str, str | np.ndarray],
    *,
    k: int,
    plan: str | ScoringPlan | None = None,
    bundle: str | None = None,
    key: str | None = "query",
    batch_size: int = 8192,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Version-aware search: each query model encodes its own queries, the index is scored fused.

    Args:
      index: a saved index directory, or an open `BinaryIndex` (or
        `ShardedIndex`, on several processes), whose versions are the plan's.
      queries: query model -> its float embeddings [Q, d_model] of the same
        Q queries, or the file holding them.
      k: results per query.
      plan: the scoring plan (a file or a loaded one); its query models are
        loaded from the runs it records. Or give `bundle`.
      bundle: an exported bundle carrying a plan and its query encoders.
      key: the queries' array name in an .npz or a directory.
      batch_size: rows per encoded batch.
      timings: as for `search_index`.

    Returns:
      (ids int64 [Q, k], scores float32 [Q, k]), best first, ties to the lower id.

    Raises:
      DataError, PlanError, LoadError, BundleError, IndexFormatError: naming the input.
    """
    if (plan is None) == (bundle is None):
        raise DataError("give the scoring plan as exactly one of plan and bundle")
    if bundle is not None:
        served = load_bundle(bundle)
        if served.plan is None:
            raise DataError(f"{bundle}: this bundle carries no scoring plan (export --plan)")
        plan = served.plan
        dims = {name: info["d"] for name, info in served.manifest["plan"]["models"].items()}
        encoders = {name: functools.partial(served.encode, model=name) for name in dims}
    else:
        plan = plan_lib.load(plan) if isinstance(plan, str) else plan
        models = query_models(plan)
        dims = {name: model.dim for name, model in models.items()}
        encoders = {name: model.encode for name, model in models.items()}
    index = load_index(index) if isinstance(index, str) else index
    plan.check_index(index.m, list(index.versions))
    fusion = plan.fusion()
    if set(queries) != set(fusion.models):
        raise PlanError(
            f"the plan's query models are {list(fusion.models)}; queries were given for "
            f"{sorted(queries)}"
        )
    if not 1 <= k <= index.ntotal:
        raise DataError(f"k={k} must be in [1, {index.ntotal}] (the documents in the index)")
    queries = {
        name: read_queries(x, key, dims[name]) if isinstance(x, str) else x
        for name, x in queries.items()
    }
    with _timed(timings, "encode_seconds"):
        planes = {name: encoders[name](x, batch_size) for name, x in queries.items()}
    try:
        with _timed(timings, "search_seconds"):
            return tuple(reversed(search_fused(index, planes, fusion, k)))
    except ValueError as e:
        raise DataError(str(e)) from None


def faiss_engine(
    index: BinaryIndex | IVFIndex | ShardedIndex, *, asymmetric: bool, bits: int
) -> handoff.FaissSearch:
    """`index` served by faiss (`handoff.FaissSearch`).

    Raises:
      DataError: for what faiss cannot serve (several processes, codes of
        u >= 1, asymmetric rescoring, queries of B > 0 bits), or faiss missing.
    """
    refused = "--engine faiss serves u = 0 codes with code queries on one process"
    if isinstance(index, ShardedIndex):
        raise DataError(f"{refused}: this index is split over processes")
    if asymmetric or bits:
        what = "--asymmetric" if asymmetric else f"queries of {bits} bits"
        raise DataError(f"{refused}: not {what}")
    try:
        return handoff.FaissSearch(index)
    except (ValueError, FaissMissingError) as e:
        raise DataError(f"{refused}: {e}") from None


def served_bits(index: BinaryIndex | IVFIndex | ShardedIndex) -> int:
    """The query precision an index records (`BinaryIndex.query_bits`)."""
    if isinstance(index, IVFIndex):
        return index.codes.query_bits
    return index.local.query_bits if isinstance(index, ShardedIndex) else index.query_bits


@contextlib.contextmanager
def _timed(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    """Records the wall seconds of the block as `timings[name]` (when `timings` is given)."""
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[name] = time.perf_counter() - start


def open_for_search(
    index: str | BinaryIndex | IVFIndex | ShardedIndex, nprobe: int | str | None = None
) -> tuple[BinaryIndex | IVFIndex | ShardedIndex, int | None]:
    """The index to search and the lists each query probes (None: every document).

    Args:
      index: a saved index directory, or an open index.
      nprobe: an IVF index's lists per query; "all" (`EXHAUSTIVE`): every
        document, its codes searched exhaustively; None: an IVF index's
        default (`IVFIndex.default_nprobe`: the one `bebrjax ivf` stored, or
        nlist), or exhaustive for an index without inverted lists. On
        several processes a directory opens exhaustively (each process its
        part) unless nprobe is given, which `load_index` refuses there.

    Raises:
      DataError: for nprobe with an open index without inverted lists;
        IndexFormatError: for nprobe with such a directory.
    """
    if nprobe == EXHAUSTIVE:
        index = load_index(index) if isinstance(index, str) else index
        return (index.codes if isinstance(index, IVFIndex) else index), None
    if isinstance(index, str):
        lists = os.path.isfile(os.path.join(index, storage.IVF_FILE))
        index = load_index(index, ivf=nprobe is not None or (lists and jax.process_count() == 1))
    if isinstance(index, IVFIndex):
        return index, index.default_nprobe if nprobe is None else nprobe
    if nprobe is not None:
        raise DataError(f"nprobe={nprobe}: the index has no inverted lists (see `bebrjax ivf`)")
    return index, None


def load_index(path: str, ivf: bool = False) -> BinaryIndex | IVFIndex | ShardedIndex:
    """The index at `path`: whole on one process, each process's part on several.

    Args:
      path: a saved index directory.
      ivf: open it as an `IVFIndex` (one process only).
    """
    if ivf:
        if jax.process_count() > 1:
            raise DataError("an IVF index is searched on one process (--nprobe without start-up)")
        return IVFIndex.load(path)
    return BinaryIndex.load(path) if jax.process_count() == 1 else ShardedIndex.load(path)
