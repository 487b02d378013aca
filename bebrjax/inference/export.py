"""Export a trained part as a self-contained serving bundle (`bebrjax export`; `bebrjax.serving`).

    export_bundle(W, "bundle/", index="gallery.bebr")      # a run's part (and an index)
    export_bundle(None, "bundle/", plan="plan.json")        # a scoring plan's query models

The function is the part's `forward` (input handling included: a binarizer
bundle takes raw float32 [N, d] and L2-normalizes it itself) with the trained
variables baked in as constants (`bebrjax.inference.serialize`): serving
needs jax and numpy only, any batch size works, and the bundle's codes are
bit-identical to `inference.load(W)`'s. It is lowered for every platform of
`platforms` (default cpu, cuda and tpu; a platform the installed jax cannot
lower for is left out and the manifest lists those it has).

Choices: variables as constants rather than a second file, so the artifact
is one function that cannot be paired with the wrong weights; the manifest
hashes every file but itself; `index` copies a `BinaryIndex` (checked to
hold codes this binarizer's queries can search: no wider than its m, of any
loops and versions, e.g. the old codes a compatible binarizer searches)
into the bundle's `index/`. The bundle is written aside and renamed into
place, so an interrupted export leaves no half bundle. The
index is copied under its lock (`safe_write.index_lock`: a backfill step or
save of it meanwhile is refused, and one under way refuses the export), so
the copy is one generation of it; the copy is then checked again and the
manifest hashes and describes what was copied.

`plan` (instead of a run) writes a plan bundle for version-aware
search (see `bebrjax.serving`): every query model of the scoring plan
(`bebrjax.search.plan`), loaded from the workdir the plan records and
serialized as above into `encoders/<model>.jax`, and the plan as
`plan.json`. A model is refused (one `LoadError`) when its workdir does not
load or is no binarizer run, or when its checkpoint step, m or u is not the
plan's record: the plan was fitted on the codes of that very checkpoint.
An `index` must be one the plan searches (`ScoringPlan.check_index`: its
width m and exactly its versions).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import re
import shutil
from collections.abc import Callable, Sequence

import numpy as np

from bebrjax import workdir as wd
from bebrjax.config import to_dict
from bebrjax.errors import CheckpointError, ConfigError, LoadError, PlanError
from bebrjax.inference import Binarizer, Encoder, Loaded, Upgrade, Versions, load
from bebrjax.inference.serialize import PLATFORMS, query_encoder, serialize
from bebrjax.search import plan as plan_lib
from bebrjax.search.index import BinaryIndex
from bebrjax.search.safe_write import index_lock, move_into_place, staging_dir
from bebrjax.serving import ENCODER, ENCODERS, FORMAT, INDEX, MANIFEST, PLAN, QUERY, VERSION, sha256

PACKAGES = ("bebrjax", "jax", "jaxlib", "flax", "numpy", "orbax-checkpoint")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a model's name, as its file's name


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _describe(loaded: Loaded, encoder: Encoder, platforms: list[str]) -> dict:
    out = encoder.output_spec()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": encoder.kind,
        "part": encoder.name,
        "trainer": loaded.trainer,
        "d": encoder.input_shape[-1],
        "normalization": encoder.normalization,
        "function": {
            "file": ENCODER,
            "input": {"shape": ["N", *encoder.input_shape], "dtype": encoder.input_dtype.name},
            "output": {"shape": ["N", *out.shape], "dtype": np.dtype(out.dtype).name},
            "platforms": platforms,
            "variables": "baked in as constants",
        },
        "checkpoint": {"workdir": os.path.abspath(loaded.workdir), "step": encoder.step},
        "config": to_dict(loaded.config),
        "versions": _versions(),
    }
    if isinstance(loaded, Binarizer):
        manifest.update(m=loaded.code_dim, u=loaded.loops)
    elif isinstance(loaded, Upgrade):
        manifest.update(method=loaded.config.method, d_out=int(out.shape[-1]))
    return manifest


def _spec(shape, dtype) -> dict:
    return {"shape": ["N", *shape], "dtype": np.dtype(dtype).name}


def export_bundle(
    model: Loaded | str | None,
    out: str,
    *,
    index: str | None = None,
    part: str | None = None,
    platforms: Sequence[str] = PLATFORMS,
    overwrite: bool = False,
    plan: str | plan_lib.ScoringPlan | None = None,
) -> dict:
    """Writes the serving bundle of one part of a trained run, or of a scoring plan, to `out`.

    Args:
      model: a loaded run, or its workdir (None with `plan`).
      out: the bundle directory to create.
      index: a saved `BinaryIndex` to ship with a binarizer's encoder (or
        with a plan's encoders: one the plan searches).
      part: which part ("binarizer"; "new", "old" or "psi" of an upgrade;
        "new", "old", "independent" or "psi" of a compatible-codes run, whose
        binarizers export as binarizer bundles, with an index if given);
        default the run's main part (the binarizer, or the new model).
      platforms: the platforms to lower for.
      overwrite: replace an existing `out`.
      plan: a scoring plan (or its JSON file) instead of `model`: a plan
        bundle of every query model of the plan, loaded from the workdirs
        it records (see the module docstring).

    Returns:
      The manifest written.

    Raises:
      ConfigError, LoadError, IndexFormatError, OutputExistsError, PlanError:
      before anything is written (LoadError or PlanError also when the
      index copied is no longer one the model or plan searches).
      IndexLockedError: when a writer of the index holds it at the copy;
      nothing is left behind.
    """
    if (model is None) == (plan is None):
        raise ConfigError("give exactly one of a run (--workdir) and a scoring plan (--plan)")
    if plan is not None:
        if part is not None:
            raise ConfigError(f"--part {part}: a plan bundle holds every query model of the plan")
        return _export_plan(plan, out, index, platforms, overwrite)
    loaded = load(model) if isinstance(model, str) else model
    if not isinstance(loaded, Loaded):
        raise LoadError(f"{model}: a comparison holds several runs; export one of them")
    if isinstance(loaded, Versions) and (part or "new") in loaded.binarizers:
        loaded, part = loaded.binarizer(part or "new"), "binarizer"  # a binarizer run of its own
    part = part or ("binarizer" if isinstance(loaded, Binarizer) else "new")
    encoder = loaded.part(part)
    out = os.path.normpath(out)
    wd.refuse_existing(out, overwrite, directory=True)
    check = None
    if index is not None:
        if not isinstance(loaded, Binarizer):
            raise LoadError(f"{loaded.workdir}: an index goes with a binarizer's bundle")
        check = functools.partial(_fits_binarizer, loaded, index)
        check(BinaryIndex.load(index))
    blob, lowered = serialize(encoder, platforms)
    blobs, manifest = {ENCODER: blob}, _describe(loaded, encoder, lowered)
    bits = loaded.query_bits if isinstance(loaded, Binarizer) and part == "binarizer" else 0
    if isinstance(loaded, Binarizer) and bits:
        queries = query_encoder(loaded, bits)
        blobs[QUERY], _ = serialize(queries, platforms)
        made = queries.output_spec()
        manifest["query"] = {
            "bits": bits,
            "file": QUERY,
            "input": _spec(queries.input_shape, queries.input_dtype),
            "output": _spec(made.shape, made.dtype),
        }
    return _write(out, blobs, manifest, index, check)


def _fits_binarizer(model: Binarizer, path: str, saved: BinaryIndex) -> None:
    """Raises LoadError when `model`'s queries cannot search the index `saved` (at `path`)."""
    if saved.m > model.code_dim:  # any loops and versions search exactly (SDC across u)
        raise LoadError(
            f"{path}: holds codes of width m={saved.m}; the binarizer of "
            f"{model.workdir} makes narrower ones (m={model.code_dim})"
        )


def _fits_plan(plan: plan_lib.ScoringPlan, path: str, saved: BinaryIndex) -> None:
    """Raises PlanError when `plan` does not search the index `saved` (at `path`)."""
    try:
        plan.check_index(saved.m, list(saved.versions))
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


def _plan_model(name: str, info: dict, runs: dict[str, Binarizer]) -> Binarizer:
    """The binarizer run of the plan's query model `name`, checked against the plan's record.

    Raises:
      LoadError: one line naming the model and its workdir.
    """
    where = info.get("workdir")
    if not isinstance(where, str):
        raise LoadError(f"query model {name!r} of the plan: it records no workdir")
    key = os.path.abspath(where)
    if key not in runs:
        try:
            run = load(where)
        except (LoadError, CheckpointError, OSError) as e:
            raise LoadError(f"query model {name!r} of the plan: {e}") from None
        if not isinstance(run, Binarizer):
            raise LoadError(f"query model {name!r} of the plan: {where} is not a binarizer run")
        runs[key] = run
    run = runs[key]
    found = {"step": run.encoder.step, "m": run.code_dim, "u": run.loops}
    for field, value in found.items():
        if info.get(field) != value:
            raise LoadError(
                f"query model {name!r} of the plan: {where} has {field}={value}; the plan "
                f"records {field}={info.get(field)} (it was fitted on that run's codes)"
            )
    return run


def _export_plan(
    plan: str | plan_lib.ScoringPlan,
    out: str,
    index: str | None,
    platforms: Sequence[str],
    overwrite: bool,
) -> dict:
    """`export_bundle` of a scoring plan: its query models' encoders and the plan."""
    plan = plan_lib.load(plan) if isinstance(plan, str) else plan
    names = plan.fusion().models
    odd = [name for name in names if not _FILE_NAME.fullmatch(name)]
    if odd:
        raise PlanError(f"query model name(s) {odd}: a bundle names a file after each model")
    out = os.path.normpath(out)
    wd.refuse_existing(out, overwrite, directory=True)
    check = None
    if index is not None:
        check = functools.partial(_fits_plan, plan, index)
        check(BinaryIndex.load(index))
    runs: dict[str, Binarizer] = {}
    loaded = {name: _plan_model(name, plan.models[name], runs) for name in names}
    blobs, described, serialized = {}, {}, {}
    for name, run in loaded.items():
        encoder = run.part("binarizer")
        key = os.path.abspath(run.workdir)
        if key not in serialized:  # one run under two names is serialized once
            serialized[key] = serialize(encoder, platforms)
        blob, lowered = serialized[key]
        out_spec = encoder.output_spec()
        blobs[f"{ENCODERS}/{name}.jax"] = blob
        described[name] = {
            "file": f"{ENCODERS}/{name}.jax",
            "d": encoder.input_shape[-1],
            "m": run.code_dim,
            "u": run.loops,
            "step": encoder.step,
            "workdir": key,
            "normalization": encoder.normalization,
            "input": _spec(encoder.input_shape, encoder.input_dtype),
            "output": _spec(out_spec.shape, out_spec.dtype),
            "platforms": lowered,
        }
    blobs[PLAN] = (json.dumps(plan.to_dict(), indent=2) + "\n").encode()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "plan",
        "m": plan.m,
        "calibration": plan.calibration,
        "document_versions": [v.name for v in plan.versions],
        "plan": {"file": PLAN, "models": described},
        "versions": _versions(),
    }
    return _write(out, blobs, manifest, index, check)


def _write(
    out: str,
    blobs: dict[str, bytes],
    manifest: dict,
    index: str | None,
    check: Callable[[BinaryIndex], None] | None,
) -> dict:
    """Writes `blobs` (relative name -> bytes), the index and the manifest as bundle `out`.

    The index is copied under its lock, and the copy, not the original, is
    checked (`check`), described and hashed.
    """
    tmp = staging_dir(out, ".tmp-bundle-")
    try:
        for name, blob in blobs.items():
            target = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(blob)
        if index is not None:
            with index_lock(index, "export"):
                shutil.copytree(index, os.path.join(tmp, INDEX))
            copied = BinaryIndex.load(os.path.join(tmp, INDEX))
            check(copied)
            manifest["index"] = {"path": INDEX, "count": copied.ntotal, "metric": copied.metric}
        manifest["files"] = {
            os.path.relpath(os.path.join(root, name), tmp): sha256(os.path.join(root, name))
            for root, _, names in os.walk(tmp)
            for name in sorted(names)
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
