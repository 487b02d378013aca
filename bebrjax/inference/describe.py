"""What a path holds, in a few fields: a workdir, an index, a bundle or a scoring plan.

    describe("/tmp/run")        # {"kind": "workdir", "trainer": "binarizer", "steps": ...}
    describe("gallery.bebr")    # {"kind": "index", "count": ..., "m": ..., "versions": ...}

`bebrjax info PATH` prints it. Nothing is loaded onto a device: a workdir
is described from its config.json, results.json and checkpoint directories,
an index from its memory-mapped files, a bundle from its manifest and a
plan from its JSON.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bebrjax import checkpoint, serving
from bebrjax.errors import BundleError, DataError, read_json
from bebrjax.search import BinaryIndex, IVFIndex, storage
from bebrjax.search import plan as plan_lib
from bebrjax.trainers.runs import read_config


def describe(path: str) -> dict[str, Any]:
    """A summary of what is at `path`: "kind" and a few fields of that kind.

    Kinds: "workdir" (a run: trainer, code shape, checkpoint steps per
    stage, whether it finished, its metrics headline), "index" or "ivf
    index" (count, m, u, metric, documents per version, bytes; an IVF
    index's nlist, list sizes and default nprobe), "bundle"
    (part, shapes, platforms, step, index), "scoring plan" (m, query models,
    versions and the models that score them). Every kind lists its files.

    Raises:
      DataError: when `path` is none of these; IndexFormatError, BundleError,
        PlanError or LoadError when it is one, unreadable.
    """
    if os.path.isfile(path):
        return _plan(path)
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such file or directory")
    if os.path.isfile(os.path.join(path, "config.json")):
        out = _workdir(path)
    elif os.path.isfile(os.path.join(path, storage.HEADER)):
        out = _index(path)
    elif os.path.isfile(os.path.join(path, serving.MANIFEST)):
        out = _bundle(path)
    else:
        raise DataError(
            f"{path}: not a workdir (config.json), an index ({storage.HEADER}) or a bundle "
            f"({serving.MANIFEST})"
        )
    return {**out, "files": sorted(os.listdir(path))}


def _workdir(path: str) -> dict[str, Any]:
    config = read_config(path)
    results_path = os.path.join(path, "results.json")
    finished = os.path.isfile(results_path)
    results = read_json(results_path, DataError) if finished else {}
    out: dict[str, Any] = {"kind": "workdir", "path": path, "trainer": config.get("trainer")}
    if results.get("data", {}).get("dim") is not None:
        out["d"] = results["data"]["dim"]
    model = config.get("model")
    if config.get("trainer") == "binarizer" and model is not None:
        out.update(m=model.get("code_dim"), u=model.get("loops"))
    stages = {}
    for root, dirs, _ in os.walk(path):
        if "checkpoints" in dirs:
            kept = checkpoint.steps(os.path.join(root, "checkpoints"))
            stages[os.path.relpath(root, path)] = kept[-1] if kept else None
        dirs[:] = sorted(d for d in dirs if d != "checkpoints" and not d.startswith("."))
    out["steps"] = stages.get(".") if list(stages) == ["."] else stages
    out["finished"] = finished
    if finished:
        out["metrics"] = headline(results)
        if results.get("train", {}).get("seconds") is not None:
            out["train_seconds"] = results["train"]["seconds"]
    return out


def headline(results: dict[str, Any], where: str = "") -> str | None:
    """The first table of Recall@k in `results`, at its largest k, as one line.

    E.g. "retrieval R@10: float 0.538, binary 0.543, hash 0.485"; None when
    there is none.
    """
    rows = {k: v for k, v in results.items() if isinstance(v, dict)}
    recalls = {k: v for k, v in rows.items() if any(str(key).startswith("R@") for key in v)}
    if recalls:
        ks = {key for row in recalls.values() for key in row if str(key).startswith("R@")}
        best = max(ks, key=lambda key: int(key[2:]) if key[2:].isdigit() else 0)
        scores = ", ".join(
            f"{name} {row[best]:.3f}" for name, row in recalls.items() if row.get(best) is not None
        )
        return f"{where or 'results'} {best}: {scores}"
    for key, row in rows.items():
        found = headline(row, f"{where}.{key}" if where else key)
        if found:
            return found
    return None


def _index(path: str) -> dict[str, Any]:
    ivf = os.path.isfile(os.path.join(path, storage.IVF_FILE))
    index = IVFIndex.load(path) if ivf else BinaryIndex.load(path)
    codes = index.codes if ivf else index
    out = {
        "kind": "ivf index" if ivf else "index",
        "path": path,
        "count": codes.ntotal,
        "m": codes.m,
        "u": codes.u,
        "metric": codes.metric,
        "query_bits": codes.query_bits,
        "versions": codes.counts(),
        "bytes": sum(e.stat().st_size for e in os.scandir(path) if e.is_file()),
    }
    if ivf:
        sizes = index.list_sizes()
        out["nlist"] = index.nlist
        # the lists a search probes by default; nlist where the index stores none
        out.update(nprobe=index.default_nprobe, nprobe_stored=index.nprobe is not None)
        out["list_sizes"] = [int(sizes.min()), float(np.median(sizes)), int(sizes.max())]
    return out


def _bundle(path: str) -> dict[str, Any]:
    manifest = read_json(os.path.join(path, serving.MANIFEST), BundleError)
    if not isinstance(manifest, dict) or manifest.get("format") != serving.FORMAT:
        raise BundleError(f"{path}: {serving.MANIFEST} is not a {serving.FORMAT} manifest")
    out = {"kind": "bundle", "path": path, "bundle_kind": manifest.get("kind")}
    if "plan" in manifest:
        models = manifest["plan"].get("models", {})
        out["models"] = {
            name: f"d={m.get('d')}, m={m.get('m')}, u={m.get('u')}" for name, m in models.items()
        }
        out["document_versions"] = manifest.get("document_versions")
    else:
        function = manifest.get("function", {})
        out.update(
            part=manifest.get("part"),
            d=manifest.get("d"),
            **{key: manifest[key] for key in ("m", "u") if key in manifest},
            platforms=function.get("platforms"),
            step=manifest.get("checkpoint", {}).get("step"),
        )
    out["index_count"] = manifest.get("index", {}).get("count")
    return out


def _plan(path: str) -> dict[str, Any]:
    plan = plan_lib.load(path)
    versions = {
        v.name: " + ".join(f"{t.weight:g} x {t.model}" for t in v.terms) for v in plan.versions
    }
    return {
        "kind": "scoring plan",
        "path": path,
        "m": plan.m,
        "calibration": plan.calibration,
        "models": {name: info.get("workdir") for name, info in plan.models.items()},
        "versions": versions,
    }
