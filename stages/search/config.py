"""What `expclip search` can be told; each default, help line and choice list is stated here once (data only,
no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from expclip.base.errors import ExpclipError
from expclip.base.settings import check_choices, setting
from expclip.stages.shared import common_settings


@dataclass
class SearchConfig:
    """How many neighbours, from which index, in which cache group; where queries are encoded."""

    k: int = setting(20, "Neighbours per query.")
    exact: bool = setting(False, "Exact search (faiss Flat) whatever the cache's size.")
    clip_key: str | None = common_settings.clip_key()
    device: str = common_settings.device("Where the query encoder runs")

    def check(self) -> None:
        """Refuse values outside their choices or ranges, naming the option."""
        check_choices(self)
        if self.k < 1:
            raise ExpclipError(f"-k {self.k}: ask for at least one neighbour")
