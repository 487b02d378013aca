"""bebrjax: binary embedding-based retrieval and compatible model upgrades in JAX."""

__version__ = "0.1.0"
