"""`bebrjax search`: search a saved index with queries encoded by a trained binarizer or a bundle.

    bebrjax search --index OUT (--workdir W | --bundle B) --queries PATH \
        [--key query] --k 100 --out hits.npz [--relevant PATH[:key]] [--overwrite] \
        [--nprobe N|all] [--rescore DOCS.npy | --asymmetric] [--oversample 4]
    bebrjax search --index OUT (--plan P | --bundle B) \
        --queries MODEL=PATH [--queries MODEL=PATH ...] --k 10 --out hits.npz ...

See `bebrjax.inference.query` (`search_index`, and `search_versions` for a
scoring plan: `--queries MODEL=PATH` once per query model of the plan).
hits.npz holds `ids` int64 [Q, k] and `scores` float32 [Q, k], written
whole or not at all. With `--relevant` (one relevant doc id per query, an
integer array [Q], or [Q, R] padded with -1 for several) Recall@1/5/10 is
printed as a table (Recall@j for the j <= k only: a smaller k cannot tell
the others). `--engine faiss` serves an index of u = 0 codes with faiss's
binary kernels, the same answer.

An IVF index (`bebrjax ivf`) is searched in each query's nprobe nearest
lists: `--nprobe N`, or by default the nprobe the index stores (every list
for one saved without it); `--nprobe all` searches every document. The
table and the JSON line say how it searched ("nprobe": "4 of 64 lists
(the index's default)" or "all (exhaustive)"; JSON "mode" "ivf" with
"nprobe", "nlist" and "nprobe_default", or "exhaustive") and how long it
took: the wall seconds of encoding the queries and of the search (its
compilation and any rescoring included), and queries per second of the
search.

On N processes (the start-up flags, e.g. `COMMAND=search
launch/multiprocess.sh N --index ...`) each process keeps its own part of
the index's documents, the answer is the one a single process gives, bit
for bit, and process 0 prints and writes it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bebrjax import cli, distributed, report
from bebrjax import workdir as wd
from bebrjax.commands import command_parser
from bebrjax.errors import DataError
from bebrjax.evaluators.retrieval import recall_of
from bebrjax.inference.query import (
    EXHAUSTIVE,
    load_index,
    open_for_search,
    read_relevant,
    search_index,
    search_versions,
)
from bebrjax.search import BinaryIndex, IVFIndex, ShardedIndex

RECALL_KS = (1, 5, 10)


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("search")
    p.add_argument("--index", required=True, help="a saved BinaryIndex directory")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--workdir", help="the binarizer run that encoded the index (or a compatible newer one)"
    )
    model.add_argument("--bundle", help="its exported serving bundle (or one with a plan)")
    model.add_argument("--plan", help="a scoring plan: version-aware search (fit-plan)")
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
    p.add_argument(
        "--nprobe",
        type=_nprobe,
        help="an IVF index's lists per query (default: the index's); all: every document",
    )
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


def _nprobe(value: str) -> int | str:
    """--nprobe's value: a count of lists, or "all"."""
    if value == EXHAUSTIVE:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of lists, or all") from None


def _probing(
    index: BinaryIndex | IVFIndex | ShardedIndex, nprobe: int | None, asked: int | str | None
) -> tuple[str, dict]:
    """How the search probed (`nprobe`, None: exhaustively): the table's text and the JSON's."""
    if nprobe is None:
        return "all (exhaustive)", {"mode": "exhaustive"}
    fields = {"mode": "ivf", "nprobe": nprobe, "nlist": index.nlist}
    fields["nprobe_default"] = asked is None
    text = f"{nprobe} of {index.nlist} lists"
    if asked is None:
        stored = index.nprobe is not None
        text += " (the index's default)" if stored else " (no default stored: every list)"
    return text, fields


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
    index, nprobe = (
        (load_index(args.index), None) if versioned else open_for_search(args.index, args.nprobe)
    )
    relevant = read_relevant(args.relevant, index.ntotal) if args.relevant else None
    timings = {}
    if versioned:
        ids, scores = search_versions(
            index,
            _per_model(args.queries),
            k=args.k,
            plan=args.plan,
            bundle=args.bundle,
            key=args.key,
            batch_size=args.batch_size,
            timings=timings,
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
            nprobe=nprobe,
            rescore_docs=args.rescore,
            asymmetric=args.asymmetric,
            oversample=args.oversample,
            query_bits=args.query_bits,
            engine=args.engine,
            timings=timings,
        )
    probed, fields = _probing(index, nprobe, args.nprobe)
    encode, seconds = timings["encode_seconds"], timings["search_seconds"]
    summary = {"hits": args.out, "queries": len(ids), "k": args.k, **fields}
    summary.update(
        encode_seconds=round(encode, 3),
        search_seconds=round(seconds, 3),
        queries_per_second=round(len(ids) / seconds, 1),
    )
    head = ["hits", "queries", "k", "nprobe", "encode s", "search s", "queries/s"]
    row = [args.out, len(ids), args.k, probed, f"{encode:.3f}", f"{seconds:.3f}"]
    row.append(f"{len(ids) / seconds:,.0f}")
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


def main(argv: Sequence[str]) -> int:
    """`bebrjax search`; returns the exit status."""
    return cli.run(parser(), _command, argv)
