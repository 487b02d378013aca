"""`bebrjax export`: a trained part (or a scoring plan's query models) as a serving bundle.

    bebrjax export --workdir W --out B [--index OUT] [--part new|old|psi] \
        [--platforms cpu,cuda,tpu] [--overwrite]
    bebrjax export --plan PLAN.json --out B [--index OUT] [--platforms ...]

See `bebrjax.inference.export.export_bundle`; a bundle is served with jax
and numpy alone (`bebrjax.serving.load_bundle`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bebrjax import cli, report
from bebrjax.commands import command_parser
from bebrjax.inference.export import export_bundle
from bebrjax.inference.serialize import PLATFORMS


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("export")
    p.add_argument("--workdir", help="a finished run (or --plan)")
    p.add_argument(
        "--plan", help="a scoring plan (JSON) instead: bundle every query model of the plan"
    )
    p.add_argument("--out", required=True, help="the bundle directory to write")
    p.add_argument("--index", help="a BinaryIndex to ship with the encoder(s)")
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
        plan=args.plan,
    )
    docs = manifest.get("index", {}).get("count", "-")
    if "plan" in manifest:
        models = manifest["plan"]["models"]
        rows = [
            [
                args.out,
                name,
                _shape(info["input"]),
                _shape(info["output"]),
                ",".join(info["platforms"]),
                info["step"],
                docs,
            ]
            for name, info in models.items()
        ]
        head = ["bundle", "model", "input", "output", "platforms", "step", "index docs"]
        summary = {"kind": "plan", "plan": manifest["plan"]}
        cli.print_summary(report.table(head, rows), summary)
        return
    fn = manifest["function"]
    rows = [
        [
            args.out,
            manifest["part"],
            _shape(fn["input"]),
            _shape(fn["output"]),
            ",".join(fn["platforms"]),
            manifest["checkpoint"]["step"],
            docs,
        ]
    ]
    head = ["bundle", "part", "input", "output", "platforms", "step", "index docs"]
    cli.print_summary(report.table(head, rows), {k: manifest[k] for k in ("part", "function")})


def main(argv: Sequence[str]) -> int:
    """`bebrjax export`; returns the exit status."""
    return cli.run(parser(), _command, argv)
