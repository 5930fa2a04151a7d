"""`search`: a cache's items nearest to text or image queries, through a faiss index kept beside the cache.

`SearchConfig` lives in the torch-free `config` module; `search` is imported on
first use, so reading the configuration (the CLI's --help) does not load torch.
"""

from expclip.base.lazy import lazy
from expclip.stages.search.config import SearchConfig

__all__ = ["SearchConfig", "search"]
__getattr__ = lazy({"search": "expclip.stages.search.nearest"})
