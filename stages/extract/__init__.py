"""Stage one: sources → decoding → frozen encoders → the feature cache (its parts live together here).

`ExtractConfig` lives in the torch-free `config` module; `extract` is imported on
first use, so reading the configuration (the CLI's --help) does not load torch.
"""

from expclip.stages.extract.config import ExtractConfig

__all__ = ["ExtractConfig", "counts", "extract"]


def __getattr__(name: str):
    if name in ("counts", "extract"):
        from expclip.stages.extract import extraction

        return getattr(extraction, name)
    raise AttributeError(name)
