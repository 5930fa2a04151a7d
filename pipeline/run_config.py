"""What `expclip run PRESET` can be told; each default, help line and choice list is stated here once (data
only, no torch). A field named like an ExtractConfig field overrides the preset's extract setting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.base.settings import REQUIRED, check_choices, setting
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.shared import common_settings

OVERRIDE = "Instead of the preset's (for tests or other checkpoints; the run is then not the paper's)."


@dataclass
class RunConfig:
    """Where the data and the results are, and what replaces the preset's settings (None: the preset's)."""

    data_root: Path = setting(REQUIRED, "Folder holding the datasets as the preset lays them out (--check lists "
                                        "where).")
    out: Path = setting(Path("expclip-runs"), "Folder: caches, heads and results; what is already there is "
                                                     "reused.")
    check_only: bool = setting(False, "Only list where each dataset is expected and whether it is there.")
    clip_model: str | None = setting(None, f"CLIP model name, local-dir:PATH or hf-hub:ORG/REPO. {OVERRIDE}")
    clip_pretrained: str | None = setting(
        None, "With --clip-model: " + ExtractConfig.__dataclass_fields__["clip_pretrained"].metadata["help"]
    )
    teacher: str | None = setting(None, f"Teacher HF id or folder. {OVERRIDE}")
    fit: str | None = setting(None, f"Head settings, e.g. 'batch_size=64 epochs=1'. {OVERRIDE}")
    device: str = common_settings.device()
    batch_size: int | None = setting(None, "Encoder batch (default: extract's).")
    num_workers: int | None = setting(None, "DataLoader workers (default: extract's).")

    def check(self) -> None:
        """Refuse values outside their choices and a --fit that is not one value per FitConfig name."""
        check_choices(self)
        self.fit_overrides()

    def extract_overrides(self) -> dict:
        """The ExtractConfig settings given (the device goes to every stage, see run_preset)."""
        extract = {f.name for f in dataclasses.fields(ExtractConfig)} - {"device"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name in extract and getattr(self, f.name) is not None}

    def fit_overrides(self) -> dict | None:
        """`--fit 'batch_size=64 epochs=1'` as FitConfig values, typed as ablate's grid types them (one each)."""
        if not self.fit:
            return None
        from expclip.ablate import parse_grid  # torch: only when --fit is given

        try:
            grid = parse_grid(self.fit)
        except ExpclipError as e:
            raise ExpclipError(str(e).replace("--grid", "--fit", 1)) from None
        several = [k for k, v in grid.items() if len(v) != 1]
        if several:
            raise ExpclipError(f"--fit: give one value for {', '.join(several)}")
        return {k: v[0] for k, v in grid.items()}
