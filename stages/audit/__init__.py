"""`audit`: near-duplicate pairs within and across caches (train/test leaks), exact, and the training rows
they flag as fit-head's exclusion (`leaks`).

`AuditConfig` lives in the torch-free `config` module; the rest is imported on
first use, so reading the configuration (the CLI's --help) does not load torch.
"""

from expclip.stages.audit.config import AuditConfig

__all__ = ["AuditConfig", "THRESHOLD", "audit", "flagged_items", "near_duplicates_of"]


def __getattr__(name: str):
    if name in ("THRESHOLD", "audit", "flagged_items"):
        from expclip.stages.audit import pairs

        return getattr(pairs, name)
    if name == "near_duplicates_of":
        from expclip.stages.audit.leaks import near_duplicates_of

        return near_duplicates_of
    raise AttributeError(name)
