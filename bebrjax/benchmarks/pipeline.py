r"""The serving pipeline at scale, stage by stage: wall time and peak memory of each command.

    python -m bebrjax.benchmarks.pipeline --rows 10000000     # 10M x 384 float16 (7.7 GB)
    python -m bebrjax.benchmarks.pipeline --rows 200000       # a quick look

It writes a clustered synthetic gallery of `--rows` float16 rows
(`benchmarks.encode.write_corpus`, d = 384: `--clusters`
centres, each row a centre plus Gaussian noise of `--spread` times its
scale) and `--queries` queries (noisy
copies of random gallery rows), trains a binarizer of the reference shape
for a few steps when no `--workdir` is given (its speed and memory are
measured, not its quality), then runs each stage as the user would, as a
command in a child process:

  1. encode: `bebrjax encode` of the gallery into an index;
  2. IVF lists: `bebrjax ivf` (`--nlist`, 64 training points per list);
  3. exhaustive search: `bebrjax search`, k = 10;
  4. IVF search: nprobe 1, 2, 4, ... until Recall@10 of the exhaustive top 10
     reaches `--target` (a document tied with the 10th counts); the table
     shows the first nprobe that does;
  5. rescore: the IVF search at that nprobe, its shortlist (k x 4) ranked
     by float inner products read from the gallery file;
  6. backfill: one step replacing `--backfill` of the documents
     (`encode --ids`) on the IVF index, whose lists it keeps.

Each stage's peak RSS is the kernel's (ru_maxrss of the child alone), judged
against `--rss-gb` (3) plus the size of the index's own files: a stage may
map the index it serves, never more than a bounded amount besides. Files go
to `--dir` (default a temporary directory); an existing gallery or model
there is reused. It prints a table with the CPU's name and, last, one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from bebrjax import report
from bebrjax.benchmarks.encode import measured, train_reference, write_corpus
from bebrjax.search.kernels import cpu_name

DIM, K, OVERSAMPLE = 384, 10, 4


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size_gb(path: str) -> float:
    """The bytes of the files in directory `path`, in GB."""
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e9


def write_queries(path: str, corpus: str, count: int, seed: int) -> None:
    """`count` noisy copies of random rows of the gallery `corpus`, float16 [count, d]."""
    docs = np.load(corpus, mmap_mode="r")
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(len(docs), size=count, replace=False))
    x = np.asarray(docs[rows], np.float32)
    noise = rng.standard_normal(x.shape, np.float32)
    x += 0.5 * noise * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(x.shape[1])
    np.save(path, x.astype(np.float16))


def recall_of_exhaustive(hits: str, exhaustive: str) -> float:
    """Recall@k of `hits` against the exhaustive top k: a document tied with the k-th counts."""
    got, ref = np.load(hits)["scores"], np.load(exhaustive)["scores"]
    return float(np.mean(got >= ref[:, -1:] - 1e-6))


class Pipeline:
    """The stages' commands over one gallery, and the rows of the table they fill."""

    def __init__(self, root: str, workdir: str, corpus: str, queries: str, limit_gb: float):
        self.root, self.workdir, self.corpus, self.queries = root, workdir, corpus, queries
        self.limit_gb = limit_gb
        self.rows: list[dict] = []

    def path(self, name: str) -> str:
        """A file of the run's directory."""
        return os.path.join(self.root, name)

    def stage(self, name: str, command: str, args: list[str], index: str, **extra) -> str:
        """Runs `bebrjax command args`, records its row (judged on `index`); its stdout."""
        _log(f"{name} ...")
        out, peak_mb, seconds = measured([sys.executable, "-m", "bebrjax", command, *args])
        limit = self.limit_gb + _size_gb(index)
        row = dict(stage=name, seconds=round(seconds, 1), peak_rss_gb=round(peak_mb / 1e3, 2))
        row.update(limit_gb=round(limit, 2), met=peak_mb / 1e3 <= limit, **extra)
        self.rows.append(row)
        _log(f"{name}: {seconds:,.1f} s, peak RSS {peak_mb / 1e3:.2f} GB (limit {limit:.2f})")
        return out

    def search(self, name: str, index: str, hits: str, *flags: str, exhaustive: str = "") -> float:
        """A search stage of the queries, k = 10; its Recall@10 of `exhaustive` (1.0 without)."""
        args = ["--index", index, "--workdir", self.workdir, "--queries", self.queries]
        args += ["--k", str(K), "--out", hits, "--overwrite", *flags]
        self.stage(name, "search", args, index)
        if not exhaustive:
            return 1.0
        recall = recall_of_exhaustive(hits, exhaustive)
        self.rows[-1]["recall10_exhaustive"] = round(recall, 4)
        return recall


def backfill_files(root: str, corpus: str, fraction: float, seed: int) -> tuple[str, str]:
    """(ids.npy, rows.npy): a random `fraction` of the gallery's ids and their new embeddings."""
    docs = np.load(corpus, mmap_mode="r")
    rng = np.random.default_rng(seed + 2)
    ids = np.sort(rng.choice(len(docs), size=max(1, int(fraction * len(docs))), replace=False))
    rows = np.asarray(docs[ids], np.float32)
    rows += 0.1 * rng.standard_normal(rows.shape, np.float32) * np.abs(rows).mean()
    paths = os.path.join(root, "backfill_ids.npy"), os.path.join(root, "backfill_rows.npy")
    np.save(paths[0], ids)
    np.save(paths[1], rows.astype(np.float16))
    return paths


def run(args: argparse.Namespace) -> dict:
    """Every stage in turn; the summary (settings and the table's rows)."""
    root = args.dir or tempfile.mkdtemp(prefix="bebrjax_pipeline_")
    os.makedirs(root, exist_ok=True)
    workdir = args.workdir or os.path.join(root, "binarizer")
    if not args.workdir and not os.path.isfile(os.path.join(workdir, "results.json")):
        _log("training a reference binarizer (d = m = 384, u = 1) ...")
        train_reference(workdir, DIM)
    corpus = os.path.join(root, f"gallery_{args.rows}x{DIM}_{args.clusters}_{args.spread}.npy")
    if not os.path.isfile(corpus):
        _log(f"writing {args.rows:,} x {DIM} float16 rows ...")
        write_corpus(corpus, args.rows, DIM, args.seed, args.clusters, args.spread)
    queries = os.path.join(root, "queries.npy")
    write_queries(queries, corpus, args.queries, args.seed)
    p = Pipeline(root, workdir, corpus, queries, args.rss_gb)
    index, ivf, exhaustive = p.path("gallery.bebr"), p.path("gallery.ivf"), p.path("exh.npz")
    flags = ["--workdir", workdir, "--input", corpus, "--index", index, "--overwrite"]
    summary = json.loads(p.stage("encode", "encode", flags, index).splitlines()[-1])
    nlist = args.nlist or int(min(4096, 2 ** round(np.log2(4 * np.sqrt(args.rows)))))
    flags = ["--index", index, "--out", ivf, "--nlist", str(nlist), "--sample", str(64 * nlist)]
    p.stage("IVF lists", "ivf", [*flags, "--overwrite"], ivf)
    p.search("search, exhaustive", index, exhaustive)
    nprobe, recall = 1, 0.0
    while True:
        hits = p.path(f"ivf_{nprobe}.npz")
        where = f"search, IVF nprobe {nprobe}"
        try:
            recall = p.search(where, ivf, hits, "--nprobe", str(nprobe), exhaustive=exhaustive)
        except RuntimeError as e:  # some query's probed lists hold under k documents
            if "probed lists hold only" not in str(e):
                raise
            _log(f"{where}: too few documents for k = {K}")
        if recall >= args.target or nprobe >= nlist:
            break
        nprobe = min(2 * nprobe, nlist)
    probe = ["--nprobe", str(nprobe)]
    rescore = ["--rescore", corpus, "--oversample", str(OVERSAMPLE)]
    where = f"rescore from the float file (k x {OVERSAMPLE})"
    p.search(where, ivf, p.path("r.npz"), *probe, *rescore)
    ids, rows = backfill_files(root, corpus, args.backfill, args.seed)
    flags = ["--workdir", workdir, "--input", rows, "--ids", ids, "--index", ivf]
    p.stage(f"backfill step ({args.backfill:.0%} of the documents)", "encode", flags, ivf)
    where = f"search, IVF nprobe {nprobe}, after the backfill"
    p.search(where, ivf, p.path("after.npz"), *probe, exhaustive=exhaustive)
    return {
        "cpu": cpu_name(),
        "rows": args.rows,
        "dim": DIM,
        "m": summary["m"],
        "u": summary["u"],
        "index_gb": round(_size_gb(index), 3),
        "queries": args.queries,
        "k": K,
        "nlist": nlist,
        "nprobe": nprobe,
        "stages": p.rows,
    }


def table(out: dict) -> str:
    """The stages as a table."""
    head = ["stage", "wall s", "peak RSS GB", "limit GB", "within", "R@10 of exhaustive"]
    rows = [
        [
            r["stage"],
            f"{r['seconds']:,.1f}",
            f"{r['peak_rss_gb']:.2f}",
            f"{r['limit_gb']:.2f}",
            "yes" if r["met"] else "NO",
            f"{r['recall10_exhaustive']:.3f}" if "recall10_exhaustive" in r else "",
        ]
        for r in out["stages"]
    ]
    return report.table(head, rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="gallery rows")
    parser.add_argument("--queries", type=int, default=10_000, help="queries searched")
    parser.add_argument("--clusters", type=int, default=20_000, help="centres of the gallery")
    parser.add_argument("--spread", type=float, default=1.0, help="noise around a centre")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 4 sqrt(N), <= 4096)")
    parser.add_argument("--target", type=float, default=0.95, help="IVF recall of exhaustive")
    parser.add_argument("--backfill", type=float, default=0.01, help="fraction backfilled")
    parser.add_argument("--rss-gb", type=float, default=3.0, help="RSS allowed beyond the index")
    parser.add_argument("--workdir", help="a trained binarizer run of width 384 (default: train)")
    parser.add_argument("--dir", help="where files go (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("rows", "queries", "clusters", "nlist"):
        if getattr(args, name) < (0 if name == "nlist" else 1):
            parser.error(f"--{name} must be positive")
    if args.spread <= 0:
        parser.error("--spread must be positive")
    if not 0 < args.backfill <= 1 or not 0 < args.target <= 1:
        parser.error("--backfill and --target must be in (0, 1]")
    out = run(args)
    print(
        f"{out['cpu']}; {out['rows']:,} x {out['dim']} float16 gallery, m = {out['m']}, "
        f"u = {out['u']} (index {out['index_gb']} GB); {out['queries']:,} queries, k = {K}; "
        f"nlist {out['nlist']}"
    )
    print(table(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
