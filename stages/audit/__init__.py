"""`audit`: near-duplicate pairs within and across caches (train/test leaks), exact, and the training rows
they flag as fit-head's exclusion (`leaks`).

`AuditConfig` lives in the torch-free `config` module; the rest is imported on
first use, so reading the configuration (the CLI's --help) does not load torch.
"""

from expclip.base.lazy import lazy
from expclip.stages.audit.config import AuditConfig

__all__ = ["AuditConfig", "THRESHOLD", "audit", "flagged_items", "near_duplicates_of"]
__getattr__ = lazy({**dict.fromkeys(("THRESHOLD", "audit", "flagged_items"), "expclip.stages.audit.pairs"),
                    "near_duplicates_of": "expclip.stages.audit.leaks"})
