"""What `expclip predict` can be told; each default, help line and choice list is stated here once (data only,
no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.base.settings import check_choices, integer, setting
from expclip.stages.shared import common_settings
from expclip.stages.shared.vocabulary import (
    AUTO,
    BATCH_SIZES,
    DEFAULT_CLIP,
    DETECTORS,
    PRECISIONS,
    PREDICT_EVERY,
    PREDICT_PROMPT_SET,
)


@dataclass
class PredictConfig:
    """Which CLIP, classes, prompts and face detector score the pictures, and how videos are sampled."""

    clip_model: str | None = setting(
        None, f"open_clip model, local-dir:PATH or hf-hub:ORG/REPO (default: the head's CLIP, else {DEFAULT_CLIP})."
    )
    clip_pretrained: str | None = setting(
        None, "Pretrained tag or weights file (default: the head's, else openai or the model's only tag)."
    )
    classes: str | None = setting(None, "Comma list of class names, any words (default: the 7 basic expressions).")
    prompt_set: str = setting(PREDICT_PROMPT_SET, "Prompt set for the classes' prompts and templates.")
    detector: str = setting(
        DETECTORS[0], "haar: OpenCV's bundled cascade; yunet: --detector-model FILE.onnx; none: pre-cropped faces.",
        choices=DETECTORS,
    )
    detector_model: Path | None = setting(None, "YuNet ONNX file for --detector yunet.")
    every: str = setting(
        PREDICT_EVERY, "Score every N-th frame of clips (10), or a frame every S seconds (0.5s) at the clip's frame "
        "rate; the whole clip always uses the paper's 16 frames.",
    )
    frame_folders: bool = setting(False, "Each folder given is one clip's frames (sorted).")
    fps: float | None = setting(None, "Frame folders' frame rate (per second): records get seconds.")
    device: str = common_settings.device()
    batch_size: int | None = setting(
        None, f"Face crops per CLIP pass, across pictures and frames (default: extract's, {BATCH_SIZES['cuda']} on "
        f"CUDA, {BATCH_SIZES['cpu']} on the CPU).",
    )
    precision: str = setting(AUTO, "auto = bf16 autocast on CUDA, fp32 on the CPU (as extract).",
                             choices=(AUTO, *PRECISIONS))

    def check(self) -> None:
        """Refuse values outside their choices and a batch below one, naming the option; --every and --fps are
        checked by the records' own rule (stages.predict.records.check_clip_options)."""
        check_choices(self)
        if self.batch_size is not None and (not integer(self.batch_size) or self.batch_size < 1):
            raise ExpclipError(f"--batch-size {self.batch_size!r}: give a whole number of crops, 1 or more")
