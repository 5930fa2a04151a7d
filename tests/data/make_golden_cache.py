"""Run with expclip 0.1.0 (commit b4c1897) on the path: writes the golden cache the compatibility test reads."""
import sys

import numpy as np

from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays

out = sys.argv[1]
rng = np.random.default_rng(0)
items = fmt.Items(ids=[f"{c}/{i}.png" for c in ("happy", "sad") for i in range(3)], labels=np.array([0, 0, 0, 1, 1, 1]),
                  class_names=["happy", "sad"])
clip = {
    "model": "local-dir:/models/tiny-clip",
    "pretrained": "/models/tiny-clip/open_clip_model.safetensors",
    "pretrained_sha256": "ab" * 32,
    "transform": "model",
    "precision": "float32",
    "logit_scale": 50.0,
    "embed_dim": 4,
}
teacher = {
    "model": "/models/tiny-blip2-t5",
    "instruction": "Describe the face.",
    "transform": "model",
    "precision": "float32",
    "pooling": "mean",
}
text_cfg = {k: v for k, v in clip.items() if k not in ("transform", "logit_scale", "embed_dim")}
prompts = ["a happy face.", "a sad face."]
write_arrays(
    out,
    items,
    file_attrs={"dataset": "golden", "source": "/data/golden"},
    aligned={
        "image/tiny-clip": (rng.standard_normal((6, 4)).astype(np.float32), clip),
        "teacher/tiny-blip2-t5/sha-0123456789": (rng.standard_normal((6, 5)).astype(np.float32), teacher),
    },
    small={
        "text/tiny-clip/class_name": (
            rng.standard_normal((2, 4)).astype(np.float32),
            {
                **text_cfg,
                "prompts": prompts,
                "class_names": ["Happiness", "Sadness"],
                "class_index": [0, 1],
                "prompts_sha256": "cd" * 32,
            },
        )
    },
)
