"""What `expclip audit` can be told; each default, help line and choice list is stated here once (data only,
no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from expclip.base.errors import ExpclipError
from expclip.base.settings import check_choices, setting
from expclip.stages.shared import common_settings
from expclip.stages.shared.vocabulary import NEAR_DUPLICATE


@dataclass
class AuditConfig:
    """Which pairs count as near-duplicates, and where the exact products run."""

    threshold: float = setting(NEAR_DUPLICATE, "Cosine at or above which two frames are near-duplicates.")
    within: bool = setting(True, "Also pairs inside each cache.")
    clip_key: str | None = common_settings.clip_key()
    device: str = common_settings.device("Where the products run (faiss on the CPU)")

    def check(self) -> None:
        """Refuse values outside their choices or ranges, naming the option."""
        check_choices(self)
        if not 0 < self.threshold <= 1:
            raise ExpclipError(f"--threshold {self.threshold}: a cosine in (0, 1]")
