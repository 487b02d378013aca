"""bebrjax: binary embedding-based retrieval and compatible model upgrades in JAX."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bebrjax")  # pyproject.toml's, the one place it is set
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
