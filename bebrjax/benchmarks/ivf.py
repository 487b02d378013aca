r"""IVF benchmark: bebrjax's `IVFIndex` against exhaustive SDC and faiss, on trained codes.

    python -m bebrjax.benchmarks.ivf                          # 1M docs, 1000 queries
    python -m bebrjax.benchmarks.ivf --n 100000 --skip-hnsw   # a quicker look

The gallery has real structure: the synthetic paired generator
(`bebrjax.data.synthetic`, the demo's distribution with `--clusters`
clusters) gives `20000 + n` pairs; two binarizers (u = 0 and u = 1, m = d)
are trained with configs/bebr/demo.py on a separate draw of 20000 pairs of
the same distribution, and the docs of the last n pairs, encoded, are the
gallery. The queries are the query sides of `--queries` of those gallery
pairs, drawn at random: each one's true pair is a known gallery id.

Families, each swept over its own knob (stopping once Recall@10 of its
exhaustive result reaches 0.999):
  * u = 0: bebrjax exhaustive Hamming (`BinaryIndex`), bebrjax `IVFIndex`
    (nprobe), faiss `IndexBinaryIVF` (nprobe) and `IndexBinaryHNSW`
    (efSearch, M = 32) on the same packed codes;
  * u = 1: bebrjax exhaustive SDC, bebrjax `IVFIndex`, and faiss
    `IndexIVFScalarQuantizer` of the exact code integers (which ranks by
    the raw inner product, not SDC's <b_q, b_d> / ||b_d||: its recall of
    the SDC result stays below 1);
  * float: faiss `IndexFlatIP` (exact), `IndexIVFFlat` and `IndexHNSWFlat`
    (inner product) on the float embeddings.
Every IVF has the same nlist and trains its quantizer on 64 points per list.
Recall@10 vs exhaustive compares a result's first 10 with the family's
exhaustive top 10, counting ties: a returned document counts when its exact
score is at least the exhaustive 10th score (Hamming at 128 bits ties
often, and each library breaks ties its own way). Recall@10 / @100 vs the
true pair: the query's own doc among the first 10 of a k = 10 search / the
100 of a k = 100 search. q/s: best of `--repeats` passes over all queries
after a warm-up, for k = 10 and k = 100 (an IVF whose probed lists hold
fewer than 100 documents cannot answer k = 100: "-"). Bytes per doc are the
codes plus per-doc list ids / graph links (HNSW: approximately 8 M).
For u = 0 it also times each IVF's probe alone at its smallest nprobe
reaching Recall@10 >= 0.95, against its whole search (where the time goes).
It prints the tables, headlines, writes a recall-speed plot and, last, one
JSON line.
Needs faiss-cpu (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from bebrjax.benchmarks import ivf_report
from bebrjax.benchmarks.search import best_times
from bebrjax.data.synthetic import get_data
from bebrjax.inference import Binarizer
from bebrjax.inference.corpus import as_binarizer
from bebrjax.search import BinaryIndex, kmeans
from bebrjax.search.codes import query_codes
from bebrjax.search.handoff import faiss_queries, to_faiss
from bebrjax.search.ivf import IVFIndex
from bebrjax.search.kernels import cpu_name

TRAIN_PAIRS, TRAIN_PER_LIST, HNSW_M, TARGET = 20000, 64, 32, 0.95
EF_SEARCH = (16, 32, 64, 128, 256, 512)
EXHAUSTIVE_U0, EXHAUSTIVE_U1 = "u0/bebrjax exhaustive Hamming", "u1/bebrjax exhaustive SDC"
_START = time.perf_counter()


def _log(message: str) -> None:
    """A progress line on stderr, with the seconds since the start."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def train_binarizer(
    workdir: str, bits: int, dim: int, clusters: int, steps: int, seed: int
) -> Binarizer:
    """Trains (or reuses, if finished) a demo-config binarizer of `bits` bits per dimension."""
    from bebrjax.config import apply_overrides, load_config
    from bebrjax.trainers import binarizer

    if not os.path.isfile(os.path.join(workdir, "results.json")):
        here = os.path.dirname(os.path.abspath(__file__))
        config = load_config(
            os.path.join(here, "..", "..", "configs", "bebr", f"demo.py:bits={bits}")
        )
        overrides = [f"data.num_pairs={TRAIN_PAIRS}", f"data.dim={dim}", f"data.seed={seed}"]
        overrides += [f"data.num_clusters={clusters}", f"train.steps={steps}", "eval.hash=false"]
        apply_overrides(config, overrides)
        binarizer.train_and_evaluate(config, workdir)
    return as_binarizer(workdir)


def encode(model: Binarizer, x: np.ndarray, desc: str, chunk: int = 65536) -> np.ndarray:
    """int8 planes [N, u+1, m] of float rows `x`, chunk by chunk under a progress bar."""
    out = np.empty((len(x), model.loops + 1, model.code_dim), np.int8)
    with tqdm(total=len(x), desc=desc, unit="row", file=sys.stderr) as bar:
        for start in range(0, len(x), chunk):
            out[start : start + chunk] = model.encode(x[start : start + chunk], 8192)
            bar.update(min(chunk, len(x) - start))
    return out


def sdc_scores(queries: np.ndarray, docs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact SDC <b_q, b_d> / ||b_d|| (Hamming's order at u = 0) of result `ids`; -inf for -1."""
    weights = 2.0 ** -np.arange(docs.shape[1])
    bq = np.einsum("qpm,p->qm", queries, weights)
    bd = np.einsum("qkpm,p->qkm", docs[np.maximum(ids, 0)], weights)
    scores = np.einsum("qm,qkm->qk", bq, bd) / np.linalg.norm(bd, axis=-1)
    return np.where(ids < 0, -np.inf, scores)


def ip_scores(queries: np.ndarray, docs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact float64 inner products of result `ids`; -inf for -1."""
    rows = docs[np.maximum(ids, 0)].astype(np.float64)
    scores = np.einsum("qm,qkm->qk", queries.astype(np.float64), rows)
    return np.where(ids < 0, -np.inf, scores)


class Family:
    """Methods searched on one kind of code, judged against its exhaustive top 10."""

    def __init__(self, name: str, exact: Callable[[np.ndarray], np.ndarray], true_ids, repeats):
        self.name, self.exact, self.true_ids, self.repeats = name, exact, true_ids, repeats
        self.kth: np.ndarray | None = None  # exact score of each query's exhaustive 10th
        self.rows: list[dict] = []
        self.split: list[dict] = []  # `time_split`'s rows (u = 0)

    def _true(self, ids: np.ndarray | None) -> float | None:
        """How often the true pair is among `ids` [Q, k] (None: not searched)."""
        return None if ids is None else float((ids == self.true_ids[:, None]).any(1).mean())

    def sweep(self, method: str, knob: str, settings, search, build_s: float, bytes_per_doc):
        """Measures `method` at each setting in turn until its Recall@10 of exhaustive >= 0.999.

        Args:
          method: its name; the family's first method is its exhaustive reference.
          knob: the setting's name ("-": none).
          settings: the values swept, ascending.
          search: `(setting, k) -> ids` int [Q, k] of the queries.
          build_s: seconds its index took to build (train and add).
          bytes_per_doc: the index's size per document.
        """
        for setting in settings:
            ids10 = _answerable(search, setting, 10)  # also the warm-up (compilation)
            if ids10 is None:
                _log(f"{self.name} {method} {knob}={setting}: too few documents for k = 10")
                continue
            ids100 = _answerable(search, setting, 100)
            fns = {10: functools.partial(search, setting, 10)}
            if ids100 is not None:
                fns[100] = functools.partial(search, setting, 100)
            seconds = best_times(fns, self.repeats)
            scores = self.exact(ids10)
            if self.kth is None:
                self.kth = scores[:, 9]
            row = dict(family=self.name, method=method, knob=knob, setting=setting)
            row.update(
                recall10_exhaustive=float(np.mean(scores >= self.kth[:, None] - 1e-9)),
                recall10_true=self._true(ids10),
                recall100_true=self._true(ids100),
                qps10=len(ids10) / seconds[10],
                qps100=None if ids100 is None else len(ids10) / seconds[100],
                build_s=round(build_s, 2),
                bytes_per_doc=bytes_per_doc,
            )
            self.rows.append(row)
            recall, qps = row["recall10_exhaustive"], row["qps10"]
            where = "" if knob == "-" else f" {knob}={setting}"
            _log(f"{self.name} {method}{where}: R@10 exh {recall:.3f}, {qps:,.0f} q/s")
            if recall >= 0.999:
                break


def _answerable(search, setting: int, k: int) -> np.ndarray | None:
    """search(setting, k), or None where a bebrjax IVF's probed lists hold under k docs."""
    try:
        return search(setting, k)
    except ValueError as e:
        if "probed lists hold only" not in str(e):
            raise
        return None


def at_target(rows: list[dict], family: str, method: str) -> dict | None:
    """The row of the smallest setting of `method` reaching Recall@10 of exhaustive >= 0.95."""
    mine = [r for r in rows if (r["family"], r["method"]) == (family, method)]
    hits = [r for r in mine if r["recall10_exhaustive"] >= TARGET]
    return min(hits, key=lambda r: r["setting"]) if hits else None


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def _ratio(a: dict | None, b: dict | None) -> float | None:
    return None if a is None or b is None else round(a["qps10"] / b["qps10"], 3)


def _chunked_add(index, x: np.ndarray, desc: str, convert=None, chunk: int = 50000) -> float:
    """Adds `x` (through `convert`) to a faiss index a chunk at a time; the seconds it took."""
    start = time.perf_counter()
    for i in tqdm(range(0, len(x), chunk), desc=desc, unit="chunk", file=sys.stderr):
        index.add(x[i : i + chunk] if convert is None else convert(x[i : i + chunk]))
    return time.perf_counter() - start


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def _faiss_search(index, x: np.ndarray, knob: str) -> Callable[[int, int], np.ndarray]:
    """`(setting, k) -> ids` of faiss `index` with `knob` (nprobe, efSearch, "-": none) set."""

    def search(setting: int, k: int) -> np.ndarray:
        if knob != "-":
            setattr(index.hnsw if knob == "efSearch" else index, knob, setting)
        return index.search(x, k)[1]

    return search


def time_split(family: Family, ivf: IVFIndex, queries, fivf, fq) -> list[dict]:
    """Where each IVF's time goes at its smallest nprobe reaching the target recall.

    The probe alone (ranking the lists: bebrjax's `kmeans.probe` on the
    float centroids, faiss's binary quantizer search) against the whole
    search at k = 10; the rest is scanning the lists and ranking their
    documents. Milliseconds per 1000 queries.
    """
    ints = query_codes(queries, ivf.m, ivf.metric)[0]["ints"].astype(np.float32)
    probes = {
        "bebrjax IVF": lambda p: kmeans.probe(ints, ivf.centroids, p),
        "faiss BinaryIVF": lambda p: fivf.quantizer.search(fq, p),
    }
    out = []
    for method, probe in probes.items():
        row = at_target(family.rows, family.name, method)
        if row is None:
            continue
        nprobe = row["setting"]
        probe(nprobe)  # compiled
        seconds = best_times({"probe": functools.partial(probe, nprobe)}, family.repeats)
        probe_ms = seconds["probe"] * 1e6 / len(queries)
        out.append(
            dict(method=method, nprobe=nprobe, probe_ms=probe_ms, whole_ms=1e6 / row["qps10"])
        )
    return out


def binary_family(faiss, args, u: int, docs, queries, true_ids, nlist: int, probes) -> Family:
    """The u = 0 (Hamming) or u = 1 (SDC) family: exhaustive, bebrjax IVF, faiss."""
    family = Family(f"u{u}", lambda ids: sdc_scores(queries, docs, ids), true_ids, args.repeats)
    index = BinaryIndex(docs.shape[2], u, "hamming" if u == 0 else "ip")
    _, build = _timed(lambda: index.add(docs))
    name, size = "bebrjax exhaustive " + ("SDC" if u else "Hamming"), index.bytes_per_doc
    family.sweep(name, "-", [0], lambda _, k: index.search(queries, k)[1], build, size)
    _log(f"u{u}: training the bebrjax IVF quantizer (nlist {nlist})")
    ivf, build = _timed(
        lambda: IVFIndex.from_index(index, nlist, sample=TRAIN_PER_LIST * nlist, seed=args.seed)
    )
    search = lambda s, k: ivf.search(queries, k, nprobe=s)[1]  # noqa: E731
    family.sweep("bebrjax IVF", "nprobe", probes, search, build, size + 4)
    fq = faiss_queries(index, queries)
    _log(f"u{u}: training faiss IVF (nlist {nlist})")
    fivf, build = _timed(lambda: to_faiss(index, "ivf", nlist=nlist, seed=args.seed))
    name, code = ("faiss IVF-SQ8 (raw IP)" if u else "faiss BinaryIVF"), fivf.code_size
    family.sweep(name, "nprobe", probes, _faiss_search(fivf, fq, "nprobe"), build, code + 8)
    if u == 0:
        family.split = time_split(family, ivf, queries, fivf, fq)
    if u == 0 and not args.skip_hnsw:
        hnsw = faiss.IndexBinaryHNSW(8 * fq.shape[1], HNSW_M)
        convert = functools.partial(faiss_queries, index)
        build = _chunked_add(hnsw, docs, "faiss BinaryHNSW build", convert)
        search, size = _faiss_search(hnsw, fq, "efSearch"), code + 8 * HNSW_M
        family.sweep("faiss BinaryHNSW", "efSearch", EF_SEARCH, search, build, size)
    return family


def float_family(faiss, args, docs, queries, true_ids, nlist: int, probes) -> Family:
    """The float embeddings in faiss: IndexFlatIP (exact), IndexIVFFlat, IndexHNSWFlat."""
    family = Family("float", lambda ids: ip_scores(queries, docs, ids), true_ids, args.repeats)
    d, ip = docs.shape[1], faiss.METRIC_INNER_PRODUCT
    flat = faiss.IndexFlatIP(d)
    _, build = _timed(lambda: flat.add(docs))
    family.sweep("faiss FlatIP", "-", [0], _faiss_search(flat, queries, "-"), build, 4 * d)
    _log(f"float: training faiss IVFFlat (nlist {nlist})")
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, ip)
    ivf.cp.seed, ivf.cp.spherical = args.seed, True
    count = min(len(docs), TRAIN_PER_LIST * nlist)
    sample = np.sort(np.random.default_rng(args.seed).choice(len(docs), count, replace=False))
    _, build = _timed(lambda: (ivf.train(docs[sample]), ivf.add(docs)))
    search = _faiss_search(ivf, queries, "nprobe")
    family.sweep("faiss IVFFlat", "nprobe", probes, search, build, 4 * d + 8)
    if not args.skip_hnsw:
        hnsw = faiss.IndexHNSWFlat(d, HNSW_M, ip)
        build = _chunked_add(hnsw, docs, "faiss HNSWFlat build")
        search, size = _faiss_search(hnsw, queries, "efSearch"), 4 * d + 8 * HNSW_M
        family.sweep("faiss HNSWFlat", "efSearch", EF_SEARCH, search, build, size)
    return family


def run(args, faiss) -> dict:
    """Trains, encodes, builds and sweeps every family; returns the figures."""
    faiss.omp_set_num_threads(args.threads)
    root = args.dir or tempfile.mkdtemp(prefix="bebrjax_ivf_bench_")
    os.makedirs(root, exist_ok=True)
    models = {}
    for u, given in ((0, args.workdir_u0), (1, args.workdir_u1)):
        _log(f"binarizer u={u}: " + (f"loading {given}" if given else f"{args.steps} steps"))
        workdir = given or os.path.join(root, f"binarizer_u{u}")
        train = (workdir, u + 1, args.dim, args.clusters, args.steps, args.seed)
        got = models[u] = as_binarizer(given) if given else train_binarizer(*train)
        if got.dim != args.dim or got.loops != u:
            raise SystemExit(f"{workdir}: d={got.dim}, u={got.loops}; need d={args.dim}, u={u}")
    _log(f"generating {TRAIN_PAIRS + args.n:,} synthetic pairs (d = {args.dim})")
    data = get_data(TRAIN_PAIRS + args.n, args.dim, num_clusters=args.clusters, seed=args.seed)
    docs = np.ascontiguousarray(data.doc[TRAIN_PAIRS:])
    true_ids = np.sort(np.random.default_rng(args.seed + 1).choice(args.n, args.queries, False))
    queries = data.query[TRAIN_PAIRS + true_ids]
    del data
    nlist = args.nlist or 2 ** round(math.log2(4 * math.sqrt(args.n)))
    # Powers of two and the midpoints 3 * 2^(i-1) between them, up to nlist / 4.
    probes = sorted({c * 2**i for i in range(nlist.bit_length()) for c in (2, 3)} | {1})
    probes = [p for p in probes if p <= max(1, nlist // 4)]
    rows, split = [], []
    for u, model in models.items():
        _log(f"u={u}: encoding the gallery and the queries")
        planes = encode(model, docs, f"encode u={u}")
        qplanes = encode(model, queries, f"queries u={u}")
        family = binary_family(faiss, args, u, planes, qplanes, true_ids, nlist, probes)
        rows, split = rows + family.rows, split + family.split
        del planes
    rows += float_family(faiss, args, docs, queries, true_ids, nlist, probes).rows
    methods = dict.fromkeys((r["family"], r["method"]) for r in rows)
    best = {f"{f}/{m}": at_target(rows, f, m) for f, m in methods}
    out = {
        "cpu": cpu_name(),
        "backend": jax.default_backend(),
        "faiss_version": faiss.__version__,
        "threads": args.threads,
        "n": args.n,
        "queries": args.queries,
        "dim": args.dim,
        "clusters": args.clusters,
        "steps": args.steps,
        "nlist": nlist,
        "ivf_speedup_at_0.95": _ratio(best["u0/bebrjax IVF"], best[EXHAUSTIVE_U0]),
        "ivf_vs_faiss_ivf_at_0.95": _ratio(best["u0/bebrjax IVF"], best["u0/faiss BinaryIVF"]),
        "u1_ivf_speedup_at_0.95": _ratio(best["u1/bebrjax IVF"], best[EXHAUSTIVE_U1]),
        "settings_at_0.95": {key: r and r["setting"] for key, r in best.items()},
        "u0_time_split": [{k: _round(v) for k, v in r.items()} for r in split],
        "rows": [{k: _round(v) for k, v in r.items()} for r in rows],
    }
    out["plot"] = args.plot or os.path.join(root, "ivf_recall_speed.png")
    ivf_report.plot(out["plot"], rows)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery size")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128, help="embedding width d (= code width m)")
    parser.add_argument("--clusters", type=int, default=1000, help="synthetic clusters")
    parser.add_argument("--nlist", type=int, default=0, help="inverted lists (0: 4 sqrt(n), pow 2)")
    parser.add_argument("--steps", type=int, default=300, help="binarizer training steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="binarizer workdirs and the plot (default: a temp dir)")
    parser.add_argument("--plot", help="the PNG (default: <dir>/ivf_recall_speed.png)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="faiss threads")
    parser.add_argument("--skip-hnsw", action="store_true", help="no HNSW (slow builds at 1M)")
    parser.add_argument("--workdir-u0", help="a trained u = 0 binarizer of width --dim")
    parser.add_argument("--workdir-u1", help="a trained u = 1 binarizer of width --dim")
    args = parser.parse_args(argv)
    if min(args.n, args.queries, args.dim, args.clusters, args.steps, args.repeats) <= 0:
        parser.error("--n, --queries, --dim, --clusters, --steps and --repeats must be positive")
    if args.queries > args.n or args.n < 100 or not 0 <= args.nlist <= args.n // 39:
        parser.error("need 100 <= n, queries <= n and nlist <= n / 39 (faiss's minimum)")
    try:
        import faiss
    except ImportError:
        print("error: needs faiss-cpu: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    out = run(args, faiss)
    print(ivf_report.table(out["rows"]))
    print(ivf_report.split_table(out["u0_time_split"]))
    print("\n".join(ivf_report.headlines(out)))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
