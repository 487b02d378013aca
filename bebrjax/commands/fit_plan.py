"""`bebrjax fit-plan`: a scoring plan for version-aware search over finished binarizer runs.

    bebrjax fit-plan --run old=W/old --run independent=W/independent \
        [--score old=new:0.5] --out plan.json [--pairs 4000] \
        [--calibration negatives|margin] [--seed 0] [--overwrite]

Each `--run NAME=WORKDIR` is a query model and the document version it
encodes (name it as `encode --version` does: by default the workdir's
name); each version is scored by its own model. `--score VERSION=MODEL:W`
lets another model's queries score that version too, with weight W (e.g.
a compatible new model's queries on the old documents). The calibrations
are fitted on a seeded sample of the runs' training pairs, which must be
the same pairs (`bebrjax.inference.plans.fit_runs`). The plan is written
whole or not at all; `bebrjax search --plan` and `bebrjax export --plan`
take it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from bebrjax import cli, report
from bebrjax import workdir as wd
from bebrjax.commands import command_parser
from bebrjax.errors import PlanError
from bebrjax.inference.plans import fit_runs


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    """NAME=VALUE strings as a dict; a malformed or repeated NAME is a PlanError."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise PlanError(f"{flag} {value!r}: expected NAME=VALUE")
        if name in out:
            raise PlanError(f"{flag} {name!r} given twice")
        out[name] = rest
    return out


def parse_scores(values: Sequence[str]) -> dict[str, dict[str, float]]:
    """--score VERSION=MODEL:W[,MODEL:W] values as {version: {model: weight}}."""
    scores: dict[str, dict[str, float]] = {}
    for version, spec in _pairs(values, "--score").items():
        for item in spec.split(","):
            model, _, weight = item.partition(":")
            try:
                scores.setdefault(version, {})[model] = float(weight or 1.0)
            except ValueError:
                raise PlanError(
                    f"--score {version}={spec}: weight {weight!r} is not a number"
                ) from None
    return scores


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("fit-plan")
    p.add_argument("--run", action="append", required=True, help="NAME=WORKDIR, repeated")
    p.add_argument("--score", action="append", default=[], help="VERSION=MODEL:WEIGHT,...")
    p.add_argument("--out", required=True, help="the plan .json to write")
    p.add_argument("--pairs", type=int, default=4000, help="training pairs to fit on (4000)")
    p.add_argument("--calibration", default="negatives", help="negatives or margin")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def _command(args: argparse.Namespace) -> None:
    wd.refuse_existing(args.out, args.overwrite)
    runs = _pairs(args.run, "--run")
    plan = fit_runs(
        runs,
        parse_scores(args.score),
        pairs=args.pairs,
        calibration=args.calibration,
        seed=args.seed,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    wd.write_json(args.out, plan.to_dict())
    rows = [
        [
            v.name,
            " + ".join(f"{t.weight:g} x {t.model}" for t in v.terms),
            "; ".join(f"{t.model}: {t.scale:.4g} cos {t.shift:+.4g}" for t in v.terms),
            f"{v.scale:.4g} s {v.shift:+.4g}",
        ]
        for v in plan.versions
    ]
    head = ["version", "scored by", "calibration", "fused"]
    cli.print_summary(report.table(head, rows), {"plan": args.out, **plan.to_dict()})


def main(argv: Sequence[str]) -> int:
    """`bebrjax fit-plan`; returns the exit status."""
    return cli.run(parser(), _command, argv)
