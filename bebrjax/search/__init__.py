"""Search over packed recurrent binary codes (SDC, Hamming) and float vectors."""

from bebrjax.search.backfill import backfill
from bebrjax.search.index import BinaryIndex, FloatIndex, IndexFormatError

__all__ = ["BinaryIndex", "FloatIndex", "IndexFormatError", "backfill"]
