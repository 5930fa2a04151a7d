"""Stage two's faiss side: search a cache's items, audit caches for near-duplicates (train/test leaks)."""

from expclip.stages.neighbours.audit import THRESHOLD, audit, flagged_items
from expclip.stages.neighbours.search import search

__all__ = ["THRESHOLD", "audit", "flagged_items", "search"]
