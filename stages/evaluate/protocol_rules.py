"""The paper's protocol over evaluation data, used by `evaluate` and by `expclip run`.

- A benchmark scores its first n canonical classes (protocol.json's dataset_classes):
  AffectNet-7 is AffectNet's validation set without Contempt, so items of other classes are left out.
- DFEW and MAFW report the mean over their five folds, as the official test.py does.
- Table 2: the measured numbers of one prompt set beside the paper's.
"""

from __future__ import annotations

import numpy as np

from expclip.stages.shared import protocol


def scored_classes(dataset: str) -> set[str] | None:
    """The canonical classes a benchmark scores (its first n), or None for a dataset the protocol does not name."""
    count = protocol.dataset_classes().get(dataset)
    return None if count is None else set(protocol.class_order()[:count])


def unscored_classes(class_names: list[str], dataset: str, label_map: dict[str, str] | None = None) -> list[int]:
    """Indices of `class_names` whose canonical class the benchmark `dataset` does not score (none for a
    dataset the protocol does not name, or names that mean no canonical class)."""
    scored = scored_classes(dataset)
    if scored is None:
        return []
    names = label_map or {}
    meaning = [protocol.canonical_class(names.get(n, n)) for n in class_names]
    return [i for i, c in enumerate(meaning) if c is not None and c not in scored]


def fold_means(records: list[dict]) -> list[dict]:
    """UAR and WAR per (dataset, method, prompt set), averaged over folds as the official test.py does."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["prompt_set"]), []).append(r)
    return [{"dataset": d, "method": m, "prompt_set": s, "folds": len(rs), "n": sum(r["n"] for r in rs),
             "uar": float(np.mean([r["uar"] for r in rs])), "war": float(np.mean([r["war"] for r in rs]))}
            for (d, m, s), rs in groups.items()]


def table2(means: list[dict], paper: dict[str, dict[str, tuple[float, float]]], prompt_set: str) -> list[dict]:
    """The rows of `prompt_set` beside the paper's Table 2 (`paper`: method -> dataset -> (UAR, WAR)):
    measured, paper and difference (points), per dataset; None where the paper reports no such number."""
    rows = []
    for row in means:
        if row["prompt_set"] == prompt_set:
            uar, war = paper.get(row["method"], {}).get(row["dataset"], (None, None))
            rows.append({**row, "paper_uar": uar, "paper_war": war,
                         "delta_uar": None if uar is None else row["uar"] - uar,
                         "delta_war": None if war is None else row["war"] - war})
    return rows
