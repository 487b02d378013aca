"""Error types shared by modules that must not import the training stack.

The serving path (`bebrjax.serving`, `bebrjax.search`) imports only jax and
numpy, so the error every bad config raises lives here rather than in
`bebrjax.config` (which re-exports it).
"""


class ConfigError(ValueError):
    """A config file, argument or override that cannot be used."""


class OutputExistsError(ValueError):
    """An output path that exists already and was not to be replaced."""
