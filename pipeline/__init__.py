"""expclip: Exp-CLIP as a feature-caching two-stage pipeline."""

from expclip.base.version import __version__

__all__ = ["__version__"]
