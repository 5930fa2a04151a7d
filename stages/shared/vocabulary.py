"""The fixed value sets that options offer, as data (no torch import), so `expclip --help` lists them fast.

The code that acts on a value imports its set from here; configs and the CLI
offer exactly these choices.
"""

import re

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # the forms --device takes (stages.shared.devices reads them)
# DEVICES as one compiled pattern, which both the option check and devices.resolve_device match: N is written as
# torch reads an index (ASCII digits, no leading zero: torch refuses cuda:01).
DEVICE = re.compile(r"auto|cpu|cuda(?::(?P<index>0|[1-9][0-9]*))?|mps")
DEVICE_HELP = "auto (CUDA when there is one, else the CPU), cpu, cuda, cuda:N (CUDA device N) or mps (Apple GPUs)."
AUTO = "auto"
PRECISIONS = ("fp32", "bf16")  # configs and options; caches record the torch dtype name
BATCH_SIZES = {"cuda": 256, "cpu": 64}  # images per encoder pass by device (extract, predict): GPUs need large ones
TF32 = "tf32"  # fit-head only: float32 tensors whose matrix products run on CUDA tensor cores
FIT_PRECISIONS = (*PRECISIONS, TF32)
FP8 = "fp8"  # extract only: float8 matrix products in the large linear layers (torchao), bf16 elsewhere
EXTRACT_PRECISIONS = (*PRECISIONS, FP8)
WEIGHTS = ("float32", "bfloat16")  # extract's CLIP image-tower weights under bf16 autocast
COMPILE = ("auto", "on", "off")  # extract's torch.compile of each tower
HEAD_KINDS = ("linear", "mlp")  # linear = the paper's head
ENSEMBLES = ("logits", "embedding")
ENSEMBLE = "logits"  # the paper's: mean of a class's prompt logits
MODEL_TRANSFORM, OFFICIAL_TRANSFORM = "model", "exp-clip-official"
TRANSFORMS = (MODEL_TRANSFORM, OFFICIAL_TRANSFORM)
NEAR_DUPLICATE = 0.95  # audit's default cosine threshold; not calibrated: benchmarks/leak_threshold.py proposes one
DETECTORS = ("haar", "yunet", "none")  # predict's face detectors: OpenCV's bundled cascade, YuNet (ONNX file), none
DEFAULT_CLIP = "ViT-B-16"  # extract's and predict's CLIP when none is named (the paper's middle model)
PREDICT_PROMPT_SET = "ensemble_ten"  # predict's prompts: the largest protocol set
PREDICT_EVERY = "0.5s"  # predict's frame step, by time: an hour of video is not scored frame by frame
