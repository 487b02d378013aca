"""`bebrjax info PATH [--json]`: what a workdir, an index, a bundle or a scoring plan holds.

A few lines (`bebrjax.inference.describe`): the kind, then its sizes (count,
d, m, u, versions), checkpoint steps, metrics headline and files; `--json`
prints the same as one JSON line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from bebrjax import cli
from bebrjax.commands import command_parser
from bebrjax.inference.describe import describe


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("info")
    p.add_argument("path", help="a workdir, an index directory, a bundle or a scoring plan (.json)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead")
    return p


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_text(v)}" for key, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(_text, value)) or "-"
    return "-" if value is None else str(value)


def _command(args: argparse.Namespace) -> None:
    summary = describe(args.path)
    if args.json:
        print(json.dumps(summary))
        return
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key.replace('_', ' '):<{width}}  {_text(value)}")


def main(argv: Sequence[str]) -> int:
    """`bebrjax info`; returns the exit status."""
    return cli.run(parser(), _command, argv)
