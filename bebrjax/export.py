"""Export a trained part as a self-contained serving bundle (see `bebrjax.serving`).

    python -m bebrjax.export --workdir W --out B [--index OUT] [--part new|old|psi] \
        [--platforms cpu,cuda,tpu] [--overwrite]

The function is the part's `forward` (input handling included: a binarizer
bundle takes raw float32 [N, d] and L2-normalizes it itself) with the trained
variables baked in as constants, serialized by `jax.export` with a symbolic
batch dimension, so serving needs jax and numpy only and any batch size
works. The constants pass through `lax.optimization_barrier`, which keeps
XLA from folding them (e.g. the BatchNorm scale into its rsqrt) at compile
time: the bundle then runs the very arithmetic that `inference.load(W)`
runs, and its codes are bit-identical. It is lowered for every platform of
`platforms` (default cpu, cuda and tpu; a platform the installed jax cannot
lower for is left out and the manifest lists those it has).

Choices: variables as constants rather than a second file, so the artifact
is one function that cannot be paired with the wrong weights; the manifest
hashes every file but itself; `--index` copies a `BinaryIndex` (checked to
hold codes this binarizer's queries can search: no wider than its m, of any
loops and versions, e.g. the old codes a compatible binarizer searches)
into B/index. B is written aside and
renamed into place, so an interrupted export leaves no half bundle.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence

import jax
import numpy as np

from bebrjax import cli, report
from bebrjax import workdir as wd
from bebrjax.config import to_dict
from bebrjax.errors import ConfigError
from bebrjax.inference import Binarizer, Encoder, Loaded, LoadError, Upgrade, Versions, load
from bebrjax.search.index import BinaryIndex, move_into_place, staging_dir
from bebrjax.serving import ENCODER, FORMAT, INDEX, MANIFEST, VERSION, sha256

PLATFORMS = ("cpu", "cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
PACKAGES = ("bebrjax", "jax", "jaxlib", "flax", "numpy", "orbax-checkpoint")


def serialize(encoder: Encoder, platforms: Sequence[str] = PLATFORMS) -> tuple[bytes, list[str]]:
    """`encoder` as a `jax.export` blob with a symbolic batch dimension.

    Returns:
      (the serialized bytes, the platforms it was lowered for).

    Raises:
      ConfigError: on a platform name jax does not know.
      LoadError: when it cannot be lowered for any of `platforms`.
    """
    unknown = sorted(set(platforms) - set(KNOWN_PLATFORMS))
    if unknown or not platforms:
        raise ConfigError(
            f"platforms {', '.join(unknown) or '(none)'}: expected some of "
            f"{', '.join(KNOWN_PLATFORMS)}"
        )
    constants = jax.tree.map(np.asarray, encoder.variables)  # off the mesh: one device

    def function(x):
        return encoder.forward(jax.lax.optimization_barrier(constants), x)

    (batch,) = jax.export.symbolic_shape("N")
    spec = jax.ShapeDtypeStruct((batch, *encoder.input_shape), encoder.input_dtype)
    exported, error = _export(function, spec, tuple(platforms))
    if exported is None:  # keep the platforms that lower, one by one
        lowered = tuple(p for p in platforms if _export(function, spec, (p,))[0] is not None)
        if not lowered:
            raise LoadError(
                f"the encoder cannot be lowered for any of {', '.join(platforms)}: "
                f"{str(error).splitlines()[0]}"
            )
        exported, _ = _export(function, spec, lowered)
    return bytes(exported.serialize()), list(exported.platforms)


def _export(function, spec, platforms: tuple[str, ...]):
    """(the `jax.export.Exported`, None), or (None, the error that stopped the lowering)."""
    try:
        return jax.export.export(jax.jit(function), platforms=platforms)(spec), None
    except Exception as e:  # noqa: BLE001 - whatever stops a lowering leaves those platforms out
        return None, e


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


def export_bundle(
    model: Loaded | str,
    out: str,
    *,
    index: str | None = None,
    part: str | None = None,
    platforms: Sequence[str] = PLATFORMS,
    overwrite: bool = False,
) -> dict:
    """Writes the serving bundle of one part of a trained run to directory `out`.

    Args:
      model: a loaded run, or its workdir.
      out: the bundle directory to create.
      index: a saved `BinaryIndex` to ship with a binarizer's encoder.
      part: which part ("binarizer"; "new", "old" or "psi" of an upgrade;
        "new", "old", "independent" or "psi" of a compatible-codes run, whose
        binarizers export as binarizer bundles, with an index if given);
        default the run's main part (the binarizer, or the new model).
      platforms: the platforms to lower for.
      overwrite: replace an existing `out`.

    Returns:
      The manifest written.

    Raises:
      ConfigError, LoadError, IndexFormatError, OutputExistsError: before
      anything is written.
    """
    loaded = load(model) if isinstance(model, str) else model
    if not isinstance(loaded, Loaded):
        raise LoadError(f"{model}: a comparison holds several runs; export one of them")
    if isinstance(loaded, Versions) and (part or "new") in loaded.binarizers:
        loaded, part = loaded.binarizer(part or "new"), "binarizer"  # a binarizer run of its own
    encoder = loaded.part(part or ("binarizer" if isinstance(loaded, Binarizer) else "new"))
    out = os.path.normpath(out)
    wd.refuse_existing(out, overwrite, directory=True)
    if index is not None:
        if not isinstance(loaded, Binarizer):
            raise LoadError(f"{loaded.workdir}: an index goes with a binarizer's bundle")
        saved = BinaryIndex.load(index)
        if saved.m > loaded.code_dim:  # any loops and versions search exactly (SDC across u)
            raise LoadError(
                f"{index}: holds codes of width m={saved.m}; the binarizer of "
                f"{loaded.workdir} makes narrower ones (m={loaded.code_dim})"
            )
    blob, lowered = serialize(encoder, platforms)
    manifest = _describe(loaded, encoder, lowered)
    tmp = staging_dir(out, ".tmp-bundle-")
    try:
        with open(os.path.join(tmp, ENCODER), "wb") as f:
            f.write(blob)
        if index is not None:
            shutil.copytree(index, os.path.join(tmp, INDEX))
            manifest["index"] = {"path": INDEX, "count": saved.ntotal, "metric": saved.metric}
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


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = argparse.ArgumentParser(
        prog="python -m bebrjax.export",
        description="Export a trained encoder (and an index) as a jax-and-numpy serving bundle.",
    )
    p.add_argument("--workdir", required=True, help="a finished run")
    p.add_argument("--out", required=True, help="the bundle directory to write")
    p.add_argument("--index", help="a BinaryIndex to ship with a binarizer's encoder")
    p.add_argument(
        "--part", help="binarizer; or new, old, psi of an upgrade or compatible run (default: main)"
    )
    p.add_argument("--platforms", default=",".join(PLATFORMS), help="cpu,cuda,tpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    return p


def _shape(spec: dict) -> str:
    return "[" + ", ".join(map(str, spec["shape"])) + f"] {spec['dtype']}"


def _command(args: argparse.Namespace) -> None:
    manifest = export_bundle(
        args.workdir,
        args.out,
        index=args.index,
        part=args.part,
        platforms=[p for p in args.platforms.split(",") if p],
        overwrite=args.overwrite,
    )
    fn = manifest["function"]
    rows = [
        [
            args.out,
            manifest["part"],
            _shape(fn["input"]),
            _shape(fn["output"]),
            ",".join(fn["platforms"]),
            manifest["checkpoint"]["step"],
            manifest.get("index", {}).get("count", "-"),
        ]
    ]
    head = ["bundle", "part", "input", "output", "platforms", "step", "index docs"]
    cli.print_summary(report.table(head, rows), {k: manifest[k] for k in ("part", "function")})


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bebrjax.export`; returns the exit status."""
    return cli.run(parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
