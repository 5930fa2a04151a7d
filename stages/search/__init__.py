"""`search`: a cache's items nearest to text or image queries, through a faiss index kept beside the cache."""

from expclip.stages.search.nearest import search

__all__ = ["search"]
