"""expclip: Exp-CLIP as a feature-caching two-stage pipeline."""

__version__ = "0.1.0"
