"""Stage two, training: the head W fitted on cached (image, teacher) pairs.

`FitConfig` lives in the torch-free `config` module; `fit_head` is imported on
first use, so reading the configuration (the CLI's --help) does not load torch.
"""

from expclip.base.lazy import lazy
from expclip.stages.fit_head.config import FitConfig

__all__ = ["FitConfig", "fit_head"]
__getattr__ = lazy({"fit_head": "expclip.stages.fit_head.train"})
