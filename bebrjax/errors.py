"""Every error type of bebrjax, in one place; each message names the input and the problem.

Library functions raise these (or plain ValueError/TypeError for a bad
argument); the commands turn them into one line on stderr and exit 2. The
module imports nothing, so the serving path (`bebrjax.serving`,
`bebrjax.search`, jax and numpy only) can raise them too.
"""


class ConfigError(ValueError):
    """A config file, argument or override that cannot be used; the message names the key."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the source and the problem."""


class OutputExistsError(ValueError):
    """An output path that exists already and was not to be replaced."""


class CheckpointError(ValueError):
    """A run's checkpoints exist but cannot be read (none of them, or not for damage)."""


class LoadError(ValueError):
    """A workdir (or checkpoint step) that cannot be loaded; the message says why."""


class IndexFormatError(ValueError):
    """A saved index that cannot be read: missing, truncated or foreign."""


class PartialIndexError(ValueError):
    """A partial index left by another job, which this one must not continue."""


class IndexLockedError(RuntimeError):
    """An index (or partial index) that another running writer holds; the message names it."""


class BundleError(ValueError):
    """A bundle that cannot be used: missing, altered, truncated or foreign."""


class PlanError(ValueError):
    """A scoring plan that cannot be used: missing, malformed, or unfit for the index or queries."""


class FaissMissingError(ImportError):
    """faiss is not installed: it is a bench/dev dependency of bebrjax, not a runtime one."""


# What a user can cause, each one line on stderr and exit 2 from a command (`bebrjax.cli`).
USER_ERRORS = (
    BundleError,
    CheckpointError,
    ConfigError,
    DataError,
    FaissMissingError,
    IndexFormatError,
    IndexLockedError,
    LoadError,
    OutputExistsError,
    PartialIndexError,
    PlanError,
    OSError,  # a path that cannot be read or written: permissions, a file where a directory goes
)


def read_json(path: str, error: type[ValueError]) -> object:
    """The JSON value in the file `path`.

    Raises:
      error: naming `path` when the file is not valid JSON (or not UTF-8).
    """
    import json  # stdlib; kept local so that this module imports nothing at load

    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
