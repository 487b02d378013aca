"""What every `bebrjax` subcommand shares: its errors end in one line and exit 2.

Ctrl-C ends a command with one line and exit status 130: what it wrote
(checkpoints, a partial index) is kept, and the same command resumes.

A subcommand's `main(argv)` (`bebrjax.commands`) parses its flags with
argparse (which itself exits 2 with a usage line on a bad flag) and calls a
library function; `run` (`execute`, for flags parsed otherwise) turns the
errors a user can cause (a bad file, a bad workdir, an output in
the way, a path the system refuses) into `error: <message>` on stderr and
exit status 2. On N processes a process that fails exits at once
(`distributed.exit_now`), so the launcher can stop the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
from absl import logging

from bebrjax import distributed
from bebrjax.errors import USER_ERRORS

T = TypeVar("T")


def run(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parses `argv` (default: sys.argv) and runs `command`; returns the exit status."""
    return execute(command, parser.parse_args(argv))


def execute(command: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Runs `command(args)` through `attempt`; returns the exit status."""
    logging.set_verbosity(logging.WARNING)
    status, _ = attempt(lambda: command(args))
    return status


def attempt(work: Callable[[], T]) -> tuple[int, T | None]:
    """`work()`, with an error a user can cause as one line on stderr and status 2.

    Returns:
      (0, what `work` returned), (2, None) after a user error, or (130,
      None) after Ctrl-C (one line: re-run to resume). On N
      processes a failing process exits at once (`distributed.exit_now`,
      status 2, or 1 with the traceback for any other error), so the
      launcher can stop the others.
    """
    try:
        return 0, work()
    except KeyboardInterrupt:
        print(
            "interrupted: what was written is kept; run the same command again to resume",
            file=sys.stderr,
        )
        if jax.process_count() > 1:
            distributed.exit_now(130)
        return 130, None
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        if jax.process_count() > 1:
            distributed.exit_now(2)  # not the shutdown barrier's wait
        return 2, None
    except BaseException:
        if jax.process_count() == 1:
            raise
        traceback.print_exc()
        distributed.exit_now(1)


def print_summary(table: str, summary: dict) -> None:
    """A result as a table for people, then one JSON line for machines."""
    print(table)
    print(json.dumps(summary))
