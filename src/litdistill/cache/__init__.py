"""Offline teacher cache: run the teacher once, reuse its outputs across epochs, runs and sweeps.

``litdistill cache=build ...`` stores the teacher's outputs (full logits for label spaces, top-k
log-probabilities plus the tail mass for LLM vocabularies, and the hidden states of the layers the
hidden-state losses map to); ``cache=use`` trains from the store without loading the teacher;
``cache=auto`` builds on first use. See docs/caching.md.
"""

from litdistill.cache.build import SplitSource, StoreSpec, build_store, split_sources
from litdistill.cache.data import (
    CacheAlignmentError,
    CachedCollate,
    CachedTeacher,
    CachedTeacherDataModule,
    IndexedDataset,
)
from litdistill.cache.store import (
    CacheKeyMismatch,
    CacheMissingError,
    CorruptShardError,
    ShardPlan,
    TeacherStore,
    assigned,
    plan_shards,
)

__all__ = [
    "CacheAlignmentError",
    "CacheKeyMismatch",
    "CacheMissingError",
    "CachedCollate",
    "CachedTeacher",
    "CachedTeacherDataModule",
    "CorruptShardError",
    "IndexedDataset",
    "ShardPlan",
    "SplitSource",
    "StoreSpec",
    "TeacherStore",
    "assigned",
    "build_store",
    "plan_shards",
    "split_sources",
]
