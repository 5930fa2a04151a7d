"""What `expclip predict` can be told; each default, help line and choice list is stated here once (data only,
no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expclip.base.settings import check_choices, setting
from expclip.stages.shared import common_settings
from expclip.stages.shared.vocabulary import DETECTORS, PREDICT_CLIP, PREDICT_PROMPT_SET


@dataclass
class PredictConfig:
    """Which CLIP, classes, prompts and face detector score the pictures, and how videos are sampled."""

    clip_model: str | None = setting(
        None, f"open_clip model or local-dir:PATH (default: the head's CLIP, else {PREDICT_CLIP})."
    )
    clip_pretrained: str | None = setting(None, "Pretrained tag or weights file (default: the head's, else openai).")
    classes: str | None = setting(None, "Comma list of class names, any words (default: the 7 basic expressions).")
    prompt_set: str = setting(PREDICT_PROMPT_SET, "Prompt set for the classes' prompts and templates.")
    detector: str = setting(
        DETECTORS[0], "haar: OpenCV's bundled cascade; yunet: --detector-model FILE.onnx; none: pre-cropped faces.",
        choices=DETECTORS,
    )
    detector_model: Path | None = setting(None, "YuNet ONNX file for --detector yunet.")
    every: int = setting(1, "Score every N-th frame of videos (the whole clip always uses the paper's 16 frames).")
    frame_folders: bool = setting(False, "Each folder given is one clip's frames (sorted).")
    device: str = common_settings.device()

    def check(self) -> None:
        """Refuse values outside their choices, naming the option."""
        check_choices(self)
