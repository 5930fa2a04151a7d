"""`audit`: near-duplicate pairs within and across caches (train/test leaks), exact, and the training rows
they flag as fit-head's exclusion (`leaks`)."""

from expclip.stages.audit.leaks import near_duplicates_of
from expclip.stages.audit.pairs import THRESHOLD, audit, flagged_items

__all__ = ["THRESHOLD", "audit", "flagged_items", "near_duplicates_of"]
