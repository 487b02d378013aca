"""Models (flax linen); each module exposes `Model`."""
