"""Search a saved index with queries encoded by a trained binarizer or a bundle.

    python -m bebrjax.search --index OUT (--workdir W | --bundle B) --queries PATH \
        [--key query] --k 100 --out hits.npz [--relevant PATH[:key]] [--overwrite] \
        [--nprobe N] [--rescore DOCS.npy | --asymmetric] [--oversample 4]
    python -m bebrjax.search --index OUT (--plan P | --bundle B) \
        --queries MODEL=PATH [--queries MODEL=PATH ...] --k 10 --out hits.npz ...

The queries (float embeddings [Q, d] in an .npy, an .npz key or a directory
of <key>.npy) are encoded by the model of a workdir or an exported bundle:
the one that encoded the index's documents, or a compatible newer version
(`configs/bebr/compatible.py`) whose codes search an old or a mixed-version
index; each document is scored with the code of its own version, exactly
(SDC, ties to the lower id). A query code wider than the index's is
compared on the index's width (the shared prefix). With `--nprobe N` an
IVF index (`python -m bebrjax.ivf`) is searched in each query's N nearest
lists; `--rescore DOCS.npy` ranks the top k x `--oversample` again by the
float inner product with the documents' float embeddings (only those rows
are read), `--asymmetric` by the float query against the decoded codes
(see `bebrjax.search.rescore`). `--engine faiss` serves an index of
u = 0 codes, flat or IVF, with faiss's binary kernels, the same answer
(`bebrjax.search.handoff.FaissSearch`). hits.npz holds `ids`
int64 [Q, k] and `scores` float32 [Q, k], written whole or not at all.
With `--relevant` (one relevant doc id per query, an integer array [Q], or
[Q, R] padded with -1 for several) Recall@1/5/10 is printed as a table
(Recall@j for the j <= k only: a smaller k cannot tell the others).

With `--plan P` (`python -m bebrjax.fit_plan`, or a compatible run's
W/plans/<policy>.json) the search is version-aware (`bebrjax.search.fusion`):
`--queries MODEL=PATH` once per query model of the plan (old and new
encoders take different embeddings), each encoded by its model (loaded
from the run the plan records), every document scored by the queries of
the models that score its version, calibrated and fused, exactly. A
bundle exported with `--plan` does the same with `--bundle B`.

On N processes (the start-up flags of `bebrjax.distributed`, e.g.
`MODULE=bebrjax.search launch/multiprocess.sh N --index ...`) each process
keeps its own part of the index's documents (`search.sharded`), the
answer is the one a single process gives, bit for bit, and process 0
prints and writes it.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from bebrjax import cli, distributed, report
from bebrjax import workdir as wd
from bebrjax.data.pairs import DataError
from bebrjax.data.rows import read_ids
from bebrjax.encode import as_binarizer, open_embeddings, read_checked
from bebrjax.errors import PlanError
from bebrjax.evaluators.retrieval import recall_of
from bebrjax.inference.plans import query_models
from bebrjax.search import BinaryIndex, IVFIndex, ShardedIndex, handoff
from bebrjax.search import plan as plan_lib
from bebrjax.search.codes import MAX_QUERY_PLANES
from bebrjax.search.fusion import search_fused
from bebrjax.search.plan import ScoringPlan
from bebrjax.search.rescore import rescore
from bebrjax.serving import load_bundle

RECALL_KS = (1, 5, 10)


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
    nprobe: int | None = None,
    rescore_docs: str | None = None,
    asymmetric: bool = False,
    oversample: int = 4,
    query_bits: int | None = None,
    engine: str = "bebrjax",
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
      nprobe: search an IVF index's `nprobe` nearest lists (None: exhaustive).
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
    index = load_index(index, ivf=nprobe is not None) if isinstance(index, str) else index
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
    planes = model.encode_query(queries, batch_size, bits=bits)
    probing = {} if nprobe is None else {"nprobe": nprobe}
    try:
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
    planes = {}
    for name, x in queries.items():
        x = read_queries(x, key, dims[name]) if isinstance(x, str) else x
        planes[name] = encoders[name](x, batch_size)
    try:
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
    except (ValueError, handoff.FaissMissingError) as e:
        raise DataError(f"{refused}: {e}") from None


def served_bits(index: BinaryIndex | IVFIndex | ShardedIndex) -> int:
    """The query precision an index records (`BinaryIndex.query_bits`)."""
    if isinstance(index, IVFIndex):
        return index.codes.query_bits
    return index.local.query_bits if isinstance(index, ShardedIndex) else index.query_bits


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


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = argparse.ArgumentParser(
        prog="python -m bebrjax.search",
        description="Search a binary index with queries encoded by its model or a compatible one.",
    )
    p.add_argument("--index", required=True, help="a saved BinaryIndex directory")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--workdir", help="the binarizer run that encoded the index (or a compatible newer one)"
    )
    model.add_argument("--bundle", help="its exported serving bundle (or one with a plan)")
    model.add_argument("--plan", help="a scoring plan: version-aware search (fit_plan)")
    p.add_argument(
        "--queries",
        action="append",
        required=True,
        help=".npy, .npz, or a directory of <key>.npy; with a plan: MODEL=PATH, one per model",
    )
    p.add_argument("--key", default="query", help="the array in an .npz or directory (query)")
    p.add_argument("--k", type=int, default=100, help="results per query (100)")
    p.add_argument("--out", required=True, help="hits.npz to write (ids, scores)")
    p.add_argument("--relevant", help="PATH[:key], the relevant doc id per query: print Recall@k")
    p.add_argument("--batch-size", type=int, default=8192, help="queries per encoded batch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--nprobe", type=int, help="search an IVF index's N nearest lists")
    p.add_argument(
        "--rescore", metavar="DOCS.npy", help="rank the shortlist by float inner products"
    )
    p.add_argument(
        "--asymmetric", action="store_true", help="rank the shortlist by float query vs codes"
    )
    p.add_argument("--oversample", type=int, default=4, help="shortlist = k x this (4)")
    p.add_argument(
        "--query-bits", type=int, help="query precision: 0 codes, B bits (default: the index's)"
    )
    p.add_argument(
        "--engine",
        choices=("bebrjax", "faiss"),
        default="bebrjax",
        help="who scans: bebrjax (XLA) or faiss (u = 0 codes; the same answer)",
    )
    distributed.add_arguments(p)
    return p


def _per_model(values: Sequence[str]) -> dict[str, str]:
    """--queries MODEL=PATH values as {model: path}."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path or name in out:
            raise DataError(
                f"--queries {value!r}: with a plan, give MODEL=PATH once for each query model"
            )
        out[name] = path
    return out


def _command(args: argparse.Namespace) -> None:
    distributed.initialize_from(args)
    wd.refuse_existing(args.out, args.overwrite)  # checked before the work, not after
    versioned = args.plan is not None or (
        args.bundle is not None and any("=" in q for q in args.queries)
    )
    if versioned and args.engine == "faiss":
        raise DataError("--engine faiss serves u = 0 codes with code queries, not a --plan")
    if versioned and (args.nprobe is not None or args.rescore or args.asymmetric):
        raise DataError(
            "version-aware search scores every document of the index (an IVF index's "
            "directory opens whole): --nprobe, --rescore and --asymmetric do not go with it"
        )
    if not versioned and len(args.queries) > 1:
        raise DataError("one --queries file per search (several: MODEL=PATH, with --plan)")
    index = load_index(args.index, ivf=args.nprobe is not None)
    relevant = read_relevant(args.relevant, index.ntotal) if args.relevant else None
    if versioned:
        ids, scores = search_versions(
            index,
            _per_model(args.queries),
            k=args.k,
            plan=args.plan,
            bundle=args.bundle,
            key=args.key,
            batch_size=args.batch_size,
        )
    else:
        ids, scores = search_index(
            index,
            args.queries[0],
            k=args.k,
            workdir=args.workdir,
            bundle=args.bundle,
            key=args.key,
            batch_size=args.batch_size,
            nprobe=args.nprobe,
            rescore_docs=args.rescore,
            asymmetric=args.asymmetric,
            oversample=args.oversample,
            query_bits=args.query_bits,
            engine=args.engine,
        )
    summary = {"hits": args.out, "queries": len(ids), "k": args.k}
    head, row = ["hits", "queries", "k"], [args.out, len(ids), args.k]
    if relevant is not None:
        if len(relevant) != len(ids):
            raise DataError(f"{args.relevant}: {len(relevant)} relevant ids for {len(ids)} queries")
        ks = [j for j in RECALL_KS if j <= args.k]  # R@j needs j results per query
        summary["recall"] = recall_of(ids, relevant, ks)
        head += list(summary["recall"])
        row += [f"{v:.4f}" for v in summary["recall"].values()]
    wd.write_npz(args.out, {"ids": ids, "scores": scores}, overwrite=True)
    if distributed.is_primary():
        cli.print_summary(report.table(head, [row]), summary)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bebrjax.search`; returns the exit status."""
    return cli.run(parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
