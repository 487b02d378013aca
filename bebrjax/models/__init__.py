"""Models (flax linen); each model module exposes `Model` (common.py: what they share)."""
