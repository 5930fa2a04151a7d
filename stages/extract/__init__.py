"""Stage one: sources → decoding → frozen encoders → the feature cache (its parts live together here)."""

from expclip.stages.extract.stage import ExtractConfig, extract

__all__ = ["ExtractConfig", "extract"]
