"""expclip: Exp-CLIP as a feature-caching two-stage pipeline.

`from expclip import ZeroShotFER` is the Python API (expclip.stages.predict.api); it is
imported on first use, so `import expclip` (and the CLI's --help) loads no torch.
"""

from expclip.base.lazy import lazy
from expclip.base.version import __version__

__all__ = ["ZeroShotFER", "__version__"]
__getattr__ = lazy({"ZeroShotFER": "expclip.stages.predict.api"})
