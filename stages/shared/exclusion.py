"""The rows audit flags and fit-head leaves out: the one shape both speak, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Exclusion:
    """Training rows to leave out (e.g. near-duplicates of evaluation sets), and why, for HEAD.json."""

    rows: dict[str, np.ndarray]  # cache path (as given) -> item indices
    provenance: dict  # e.g. threshold and the evaluation caches' identities

    def count(self) -> int:
        return sum(len(v) for v in self.rows.values())
