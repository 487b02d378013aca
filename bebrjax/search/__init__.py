"""Search over packed recurrent binary codes (SDC, Hamming) and float vectors."""

from bebrjax.errors import IndexFormatError
from bebrjax.search.backfill import backfill
from bebrjax.search.float_index import FloatIndex
from bebrjax.search.index import BinaryIndex
from bebrjax.search.ivf import IVFIndex
from bebrjax.search.sharded import ShardedIndex

__all__ = [
    "BinaryIndex",
    "FloatIndex",
    "IVFIndex",
    "IndexFormatError",
    "ShardedIndex",
    "backfill",
]
