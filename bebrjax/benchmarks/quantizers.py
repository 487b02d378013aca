r"""Quantizer benchmark: bebrjax's binary codes (symmetric and asymmetric queries) against faiss's.

    python -m bebrjax.benchmarks.quantizers                  # FOLDOC recall, 1M-vector speed
    python -m bebrjax.benchmarks.quantizers --n 100000 --queries 200 --repeats 1   # quicker
    python -m bebrjax.benchmarks.quantizers --workdir W1 --workdir W2 --skip-speed

Recall (on real pairs): the held-out split of binarizer runs (`--workdir`,
repeatable; by default bits=1 and bits=2 runs of configs/bebr/npz.py on
`--data`, trained into `--out`/bits{b} unless finished there already),
query i's relevant doc being doc i. Rows:
  * float: exact cosine (faiss `IndexFlatIP` on L2-normalized vectors);
  * bebrjax, per run of loops u and stored prefix u_d in 0..u (the docs'
    first u_d+1 planes): symmetric (the queries' codes, same planes) and
    asymmetric (`Binarizer.encode_query(x, bits=B)`, B in 2, 3, 4, 8; a B the
    index refuses is skipped with a note);
  * faiss `IndexRaBitQ` (1 and 2 bits, query bits qb 0 (float), 4, 8), with and
    without a random rotation in front; `IndexRaBitQFastScan` (1 and 2 bits,
    its default qb); `IndexBinaryFlat` over the signs; 8-bit
    `IndexScalarQuantizer`. faiss indexes are trained and filled on the
    L2-normalized gallery.
Bytes per vector: bebrjax m(u_d+1)/8 + 4 (the float32 1/||b||), faiss its
`code_size`.

Speed (on random data): `--n` random unit vectors of the data's width, no
training: bebrjax's codes are sign(x) (u = 0) and the 2-bit recurrent code
`query_planes(x, 2)` (u = 1); its asymmetric queries `query_planes(q, 4)`.
Every exhaustive method above is timed at k = 10: the best of `--repeats`
passes over all queries, the methods taking turns (`search.best_times`),
after a warm-up pass each (bebrjax compiles; faiss warms its threads on a
first slice of the queries). The target: bebrjax u = 0 with 4-bit queries
at least twice as fast as faiss `IndexRaBitQFastScan` 1-bit.

It prints the tables, writes a recall-against-bytes plot and, last, one JSON
line. Needs faiss-cpu (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np

import bebrjax
from bebrjax import inference
from bebrjax.benchmarks import quantizers_report
from bebrjax.benchmarks.quantizers_speed import K, speed_rows
from bebrjax.config import load_config
from bebrjax.data import get_data
from bebrjax.evaluators.retrieval import code_recall, recall_at_k, unit_rows
from bebrjax.inference import read_config
from bebrjax.search import kernels
from bebrjax.trainers.binarizer import split_pairs

ROOT = Path(bebrjax.__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "bebr"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "foldoc_minilm.npz"
KS = (1, 10)
QUERY_BITS = (2, 3, 4, 8)  # asymmetric query precisions tried on every stored prefix
RABITQ_QB = (0, 4, 8)
TRAIN_BITS = (1, 2)  # the runs trained when no --workdir is given
TARGET = 2.0  # bebrjax u=0 with 4-bit queries over faiss RaBitQFastScan 1-bit, q/s, at least
THREADS = 2


def _row(family: str, method: str, stored_bits: float, query: str, nbytes: float, recall) -> dict:
    """One recall row."""
    return {
        "family": family,
        "method": method,
        "stored_bits": round(float(stored_bits), 3),
        "query": query,
        "bytes": float(nbytes),
        **{key: round(value, 4) for key, value in recall.items()},
    }


def _keys(path: str) -> tuple[str, str]:
    """The (query, doc) array names of an .npz (or a directory of .npy): *_new where present."""
    if os.path.isdir(path):
        names = {os.path.splitext(name)[0] for name in os.listdir(path)}
    else:
        with np.load(path) as arrays:
            names = set(arrays.files)
    return ("query_new", "doc_new") if {"query_new", "doc_new"} <= names else ("query", "doc")


def config_spec(data: str | None, bits: int) -> str:
    """The config of a run with `bits` bits per dimension: npz.py on `data`, or the demo's pairs."""
    if data is None:
        return f"{CONFIGS / 'demo.py'}:bits={bits}"
    query_key, doc_key = _keys(data)
    return f"{CONFIGS / 'npz.py'}:path={data},query_key={query_key},doc_key={doc_key},bits={bits}"


def train_runs(data: str | None, out: str) -> list[str]:
    """The bits=1 and bits=2 runs in `out`/bits{b}, trained there unless finished already.

    Raises:
      SystemExit: when a finished run there was trained on other data.
    """
    workdirs = []
    for bits in TRAIN_BITS:
        spec, workdir = config_spec(data, bits), os.path.join(out, f"bits{bits}")
        if os.path.isfile(os.path.join(workdir, "results.json")):
            if _data_of(read_config(workdir)) != _data_of(load_config(spec)):
                raise SystemExit(f"error: {workdir} holds a run on other data; pick another --out")
        else:
            print(f"training {workdir} ({spec})", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "bebrjax", "train", "--config", spec]
            command += ["--workdir", workdir]
            subprocess.run(command, check=True, cwd=ROOT)
        workdirs.append(workdir)
    return workdirs


def _data_of(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.data` with a relative path made absolute: from here, else from the repository root.

    A run trained from the repository root (e.g. launch/foldoc.sh) records the
    data path relative to the root, which then also reads from elsewhere.
    """
    data = ml_collections.ConfigDict(config.data.to_dict())
    path = data.get("path")
    if path and not os.path.isabs(path):
        here, from_root = os.path.abspath(path), str(ROOT / path)
        data.path = here if os.path.exists(here) or not os.path.exists(from_root) else from_root
    return data


def eval_split(workdir: str) -> tuple[np.ndarray, np.ndarray]:
    """The held-out (queries, docs) of a run, float32; query i pairs with doc i."""
    config = read_config(workdir)
    _, held_out = split_pairs(config, get_data(_data_of(config)))
    return np.asarray(held_out.query, np.float32), np.asarray(held_out.doc, np.float32)


def bebrjax_rows(workdir: str, queries: np.ndarray, docs: np.ndarray, notes: list[str]) -> list:
    """Recall rows of one run: each stored prefix, symmetric and at each query precision."""
    model = inference.load(workdir)
    u, m, d = model.loops, model.code_dim, docs.shape[1]
    name = os.path.basename(os.path.normpath(workdir))
    doc_planes, sym = model.encode(docs), model.encode(queries)
    asym = {bits: model.encode_query(queries, bits=bits) for bits in QUERY_BITS}
    rows = []
    for u_d in range(u + 1):
        stored, nbytes = doc_planes[:, : u_d + 1], m * (u_d + 1) / 8 + 4
        method = f"bebrjax {name} (u={u}), {u_d + 1} of {u + 1} planes"
        cases = [("bebrjax symmetric", f"{u_d + 1}-bit code", sym[:, : u_d + 1])]
        cases += [("bebrjax asymmetric", f"{b}-bit", q) for b, q in asym.items()]
        for family, query, q in cases:
            try:
                recall = code_recall(q, stored, KS)
            except ValueError as e:
                note = f"note: {query} queries skipped: {e}"
                if note not in notes:
                    notes.append(note)
                continue
            row = _row(family, method, m * (u_d + 1) / d, query, nbytes, recall)
            kind = "sym" if family == "bebrjax symmetric" else query
            row["label"] = f"{name}/{u_d + 1}p {kind}"
            rows.append(row)
    return rows


def _ids(index, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Trains `index` if it needs to, adds `gallery`, and returns the top-K ids of `queries`."""
    if not index.is_trained:
        index.train(gallery)
    index.add(gallery)
    return index.search(queries, min(K, len(gallery)))[1]


def faiss_rows(faiss, queries: np.ndarray, docs: np.ndarray) -> list[dict]:
    """Recall rows of float search and faiss's quantizers, on L2-normalized vectors."""
    q, x = unit_rows(queries), unit_rows(docs)
    d, ip = x.shape[1], faiss.METRIC_INNER_PRODUCT
    rows = [
        _row(
            "float",
            "float (faiss IndexFlatIP, cosine)",
            32,
            "float32",
            4 * d,
            recall_at_k(_ids(faiss.IndexFlatIP(d), q, x), KS),
        )
    ]
    for nb in (1, 2):
        for rotate in (False, True):
            inner = faiss.IndexRaBitQ(d, ip, nb)
            index = (
                faiss.IndexPreTransform(faiss.RandomRotationMatrix(d, d), inner)
                if rotate
                else inner
            )
            index.train(x)
            index.add(x)
            family = "faiss RaBitQ + rotation" if rotate else "faiss RaBitQ"
            method = f"faiss IndexRaBitQ {nb}-bit" + (" + rotation" if rotate else "")
            for qb in RABITQ_QB:
                inner.qb = qb
                ids = index.search(q, min(K, len(x)))[1]
                query = f"{qb}-bit" if qb else "float32"
                rows.append(_row(family, method, nb, query, inner.code_size, recall_at_k(ids, KS)))
    for nb in (1, 2):
        index = faiss.IndexRaBitQFastScan(d, ip, 32, nb)
        ids = _ids(index, q, x)
        method = f"faiss IndexRaBitQFastScan {nb}-bit"
        query = f"{index.qb}-bit"
        rows.append(
            _row("faiss RaBitQFastScan", method, nb, query, index.code_size, recall_at_k(ids, KS))
        )
    signs = faiss.IndexBinaryFlat(d)
    ids = _ids(signs, np.packbits(q > 0, axis=1), np.packbits(x > 0, axis=1))
    rows.append(
        _row(
            "faiss sign Hamming",
            "faiss IndexBinaryFlat (signs)",
            1,
            "1-bit (sign)",
            d / 8,
            recall_at_k(ids, KS),
        )
    )
    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, ip)
    rows.append(
        _row(
            "faiss int8 SQ",
            "faiss IndexScalarQuantizer 8-bit",
            8,
            "float32",
            sq.code_size,
            recall_at_k(_ids(sq, q, x), KS),
        )
    )
    return rows


def recall_rows(faiss, workdirs: list[str], notes: list[str]) -> list[dict]:
    """Float, faiss and bebrjax recall rows; float and faiss on the first run's held-out split."""
    first_q, first_d = eval_split(workdirs[0])
    rows = faiss_rows(faiss, first_q, first_d)
    for workdir in workdirs:
        queries, docs = eval_split(workdir)
        if queries.shape != first_q.shape or not np.array_equal(queries, first_q):
            notes.append(f"note: {workdir}'s held-out split differs from {workdirs[0]}'s")
        rows += bebrjax_rows(workdir, queries, docs, notes)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=None,
        help=f"paired embeddings .npz (default {DEFAULT_DATA} if it exists, else the demo's "
        "synthetic pairs); ignored with --workdir",
    )
    parser.add_argument(
        "--workdir", action="append", default=[], help="a finished binarizer run (repeatable)"
    )
    parser.add_argument("--out", default="/tmp/bebr_quantizers", help="where runs are trained")
    parser.add_argument("--n", type=int, default=1_000_000, help="speed: gallery size")
    parser.add_argument("--queries", type=int, default=1000, help="speed: queries")
    parser.add_argument("--repeats", type=int, default=3, help="speed: timed passes, best kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="the plot (default OUT/quantizers.png)")
    parser.add_argument("--skip-speed", action="store_true", help="only the recall table")
    parser.add_argument("--skip-recall", action="store_true", help="only the speed table")
    args = parser.parse_args(argv)
    if min(args.n, args.queries, args.repeats) <= 0 or args.n < K:
        parser.error(f"--n, --queries and --repeats must be positive, --n >= {K}")
    if args.skip_speed and args.skip_recall:
        parser.error("--skip-speed and --skip-recall leave nothing to do")
    data = args.data
    if data is None and DEFAULT_DATA.exists():
        data = str(DEFAULT_DATA)
    if data is not None:
        if not os.path.exists(data):
            parser.error(f"--data {data} does not exist")
        data = os.path.abspath(data)
    try:
        import faiss  # a benchmark extra, not a runtime dependency
    except ImportError:
        print("error: this benchmark needs faiss-cpu: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    faiss.omp_set_num_threads(THREADS)

    out: dict = {
        "cpu": kernels.cpu_name(),
        "backend": jax.default_backend(),
        "faiss_version": faiss.__version__,
        "threads": THREADS,
        "data": data or "synthetic (configs/bebr/demo.py)",
        "notes": [],
    }
    if args.workdir:
        config = _data_of(read_config(args.workdir[0]))
    else:
        config = _data_of(load_config(config_spec(data, TRAIN_BITS[0])))
    width = int(get_data(config).query.shape[1])
    if not args.skip_recall:
        workdirs = args.workdir or train_runs(data, args.out)
        out["runs"] = [os.path.abspath(w) for w in workdirs]
        out["recall"] = recall_rows(faiss, workdirs, out["notes"])
        out["plot"] = args.plot or os.path.join(args.out, "quantizers.png")
        os.makedirs(os.path.dirname(os.path.abspath(out["plot"])), exist_ok=True)
        title = f"Recall@10 on {os.path.basename(out['data'])} (held-out split)"
        quantizers_report.plot(out["plot"], out["recall"], title)
        print(quantizers_report.recall_table(out["recall"]))
    if not args.skip_speed:
        rows, out["speed_setup"] = speed_rows(
            faiss, width, args.n, args.queries, args.repeats, args.seed
        )
        out["speed"] = rows
        qps = {r["method"]: r["qps"] for r in rows}
        ratio = qps["bebrjax u=0 + 4-bit queries"] / qps["faiss IndexRaBitQFastScan 1-bit"]
        out.update(ratio=round(ratio, 3), target=TARGET, met=bool(ratio >= TARGET))
        print(quantizers_report.speed_table(rows))
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("\n".join(quantizers_report.headlines(out)))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
