"""Stage one: sources → decoding → frozen encoders → the feature cache (its parts live together here).

`ExtractConfig` lives in the torch-free `config` module; `extract` is imported on
first use, so reading the configuration (the CLI's --help) does not load torch.
"""

from expclip.base.lazy import lazy
from expclip.stages.extract.config import ExtractConfig

__all__ = ["ExtractConfig", "counts", "extract"]
__getattr__ = lazy(dict.fromkeys(("counts", "extract"), "expclip.stages.extract.extraction"))
