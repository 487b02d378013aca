"""The `bebrjax` command (also `python -m bebrjax`): one subcommand per module of this package.

    bebrjax train --config configs/bebr/demo.py --workdir /tmp/run
    bebrjax encode --workdir /tmp/run --input docs.npy --index gallery.bebr
    bebrjax search --workdir /tmp/run --index gallery.bebr --queries q.npy --out hits.npz
    bebrjax info gallery.bebr

Each subcommand module holds its flags (argparse), one call of a library
function and the printing of the result; `bebrjax.cli` turns every error a
user can cause into `error: <one line>` and exit status 2. Only the chosen
subcommand's module is imported, so `bebrjax --help` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from bebrjax import __version__


class Command(NamedTuple):
    """A subcommand: the module of this package that runs it, and its one line of help."""

    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command("train", "train a config into a workdir (resumes a stopped run)"),
    "encode": Command("encode", "encode float embeddings into a binary index, or a backfill step"),
    "search": Command("search", "search an index with encoded queries: hits and Recall@k"),
    "ivf": Command("ivf", "build inverted lists over a saved index, for non-exhaustive search"),
    "to-faiss": Command("to_faiss", "write a saved index as a faiss index file"),
    "export": Command("export", "export a trained encoder (and an index) as a serving bundle"),
    "heldout": Command("heldout", "write a binarizer run's held-out pairs to an .npz"),
    "fit-plan": Command("fit_plan", "fit a scoring plan for version-aware search"),
    "upgrade-gallery": Command(
        "upgrade_gallery", "move an index's stored old codes to the new version with psi"
    ),
    "info": Command("info", "summarize a workdir, an index, a bundle or a scoring plan"),
}


def command_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The argument parser of subcommand `name`: `bebrjax NAME`, described by its help line."""
    return argparse.ArgumentParser(
        prog=f"bebrjax {name}", description=COMMANDS[name].summary, **kwargs
    )


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS)) + 2
    listing = "\n".join(f"  {name:<{width}}{c.summary}" for name, c in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="bebrjax",
        usage="bebrjax [-h] [--version] COMMAND [FLAGS ...]",
        description="Binary embedding-based retrieval and embedding-model upgrades, in JAX.",
        epilog=f"commands:\n{listing}\n\n`bebrjax COMMAND --help` shows a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bebrjax {__version__}")
    parser.add_argument("command", metavar="COMMAND", choices=COMMANDS, help="one of the below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`bebrjax COMMAND ...`: runs the subcommand; returns its exit status.

    A missing or unknown subcommand prints the usage line and the problem,
    exit status 2; `--help` lists the subcommands, `--version` the version.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if not argv:
        parser.error("a COMMAND is required")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"{__name__}.{COMMANDS[args.command].module}")
    return module.main(args.args)
