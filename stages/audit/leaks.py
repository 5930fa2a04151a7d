"""Leak-free training: the training rows `audit` pairs with evaluation caches, as fit-head's exclusion."""

from __future__ import annotations

from pathlib import Path

from expclip.stages.audit.pairs import audit, flagged_items
from expclip.stages.shared.exclusion import Exclusion


def near_duplicates_of(
    train: list[Path], evals: list[Path], threshold: float, clip_key: str | None = None
) -> Exclusion:
    """Rows of each training cache within `threshold` cosine of any frame of `evals`, with what HEAD.json
    should say of them (threshold, CLIP key, the evaluation caches' identities)."""
    train, evals = [Path(p) for p in train], [Path(p) for p in evals]
    report = audit(train, evals, threshold=threshold, within=False, clip_key=clip_key)
    against = [c for c in report["caches"] if c["path"] in {str(p) for p in evals}]
    return Exclusion(rows={str(c): flagged_items(report, c) for c in train},
                     provenance={"threshold": threshold, "clip_key": report["clip_key"], "against": against})
