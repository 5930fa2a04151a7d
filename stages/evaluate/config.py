"""What `expclip evaluate` (and each of ablate's and run's evaluations) can be told; each default, help line
and choice list is stated here once (data only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from expclip.base.settings import check_choices, setting
from expclip.stages.shared import common_settings
from expclip.stages.shared.vocabulary import ENSEMBLE, ENSEMBLES

ALL_SETS = "all"  # --prompt-set all: every set the cache holds


@dataclass
class EvaluateConfig:
    """How a head and plain CLIP are scored; the defaults are the paper's."""

    baseline: bool = setting(False, "Also evaluate plain CLIP (the only method without --head).")
    prompt_sets: list[str] | None = setting(
        None, f"Prompt set to score (repeatable); '{ALL_SETS}' (default) = every set in the cache."
    )
    ensemble: str = setting(
        ENSEMBLE, "logits (paper: mean of prompt logits) or embedding (mean prompt embedding).", choices=ENSEMBLES
    )
    label_map: str | None = common_settings.label_map()
    clip_key: str | None = common_settings.clip_key()
    device: str = common_settings.device()

    def check(self) -> None:
        """Refuse values outside their choices, naming the option: the CLI and API callers both come here."""
        check_choices(self)

    def sets(self) -> list[str] | None:
        """The prompt sets asked for; None: every set in the cache."""
        return None if not self.prompt_sets or ALL_SETS in self.prompt_sets else list(self.prompt_sets)
