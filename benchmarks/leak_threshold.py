"""Where `expclip audit`'s threshold should sit for a CLIP model: cosines of faces to their altered copies
against cosines between distinct faces.

Each face is compared with four copies that a leak would carry (the same
file, re-encoded as JPEG quality 60, a 90 % centre crop, half the size) and
with every other face. A threshold separates them when the least copy cosine
is above the greatest distinct-face cosine; the table prints both, the margin
and the threshold halfway between. Faces: a folder of your own (`--faces`),
else synthetic ones; model: `--clip-model`/`--clip-pretrained` as extract takes
them, else the demo's tiny random CLIP (whose random weights tell copies from
distinct faces poorly: the point of running it on a real checkpoint).
Run: python benchmarks/leak_threshold.py [--clip-model ViT-B-32 --clip-pretrained openai] [--faces DIR] [--limit 200]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from expclip.demo.checkpoints import save_tiny_clip  # noqa: E402
from expclip.demo.synthetic import write_faces  # noqa: E402
from expclip.stages.encoders.clip import load_clip  # noqa: E402
from expclip.stages.encoders.images import (
    IMAGE_SUFFIXES,  # noqa: E402
    load_image,  # noqa: E402
)


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def centre_crop(image: Image.Image, keep: float = 0.9) -> Image.Image:
    w, h = image.size
    cw, ch = round(w * keep), round(h * keep)
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def half(image: Image.Image) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.BICUBIC)


VARIANTS = {"same file": lambda im: im, "JPEG quality 60": jpeg, "90% centre crop": centre_crop, "0.5x size": half}


def calibrate(faces: list[Image.Image], encode) -> dict:
    """Copy cosines per variant and distinct-face cosines (each face's nearest other face)."""
    base = torch.nn.functional.normalize(encode(faces), dim=-1)
    copies = {name: (torch.nn.functional.normalize(encode([f(im) for im in faces]), dim=-1) * base).sum(-1)
              for name, f in VARIANTS.items()}
    between = base @ base.T
    between.fill_diagonal_(-1)
    nearest = between.max(dim=1).values
    least_copy = min(float(c.min()) for c in copies.values())
    return {"copies": {k: v.numpy() for k, v in copies.items()}, "nearest_distinct": nearest.numpy(),
            "least_copy": least_copy, "most_distinct": float(nearest.max()),
            "margin": least_copy - float(nearest.max())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-model", help="open_clip name or local-dir:PATH (default: the demo's tiny CLIP)")
    parser.add_argument("--clip-pretrained", help="pretrained tag or weights file")
    parser.add_argument("--faces", type=Path, help="folder of face images (default: synthetic faces)")
    parser.add_argument("--limit", type=int, default=200, help="faces used at most")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.clip_model or save_tiny_clip(Path(tmp) / "clip")
        folder = args.faces or Path(tmp) / "faces"
        if args.faces is None:
            write_faces(folder, ["Happiness", "Sadness", "Anger", "Surprise"], max(1, args.limit // 4), size=96)
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
        encoder = load_clip(model, args.clip_pretrained, device=torch.device("cuda" if torch.cuda.is_available()
                                                                               else "cpu"),
                            precision="fp32", transform="model")

        def encode(images: list[Image.Image]) -> torch.Tensor:
            return encoder.encode_images(torch.stack([encoder.transform(im) for im in images])).cpu()

        found = calibrate([load_image(p) for p in files], encode)
    table = Table(title=f"copy vs distinct-face cosines: {len(files)} faces, {encoder.key}")
    for column in ("compared", "least", "median", "greatest"):
        table.add_column(column, justify="left" if column == "compared" else "right")
    for name, c in found["copies"].items():
        table.add_row(f"face vs its {name}", f"{c.min():.4f}", f"{np.median(c):.4f}", f"{c.max():.4f}")
    d = found["nearest_distinct"]
    table.add_row("face vs nearest other face", f"{d.min():.4f}", f"{np.median(d):.4f}", f"{d.max():.4f}")
    Console(width=120).print(table)
    if found["margin"] > 0:
        print(f"margin {found['margin']:.4f}: thresholds in ({found['most_distinct']:.4f}, {found['least_copy']:.4f}] "
              f"separate them; halfway: {(found['most_distinct'] + found['least_copy']) / 2:.4f}")
    else:
        print(f"no threshold separates them: the least copy cosine {found['least_copy']:.4f} is below the greatest "
              f"distinct-face cosine {found['most_distinct']:.4f}")
    return found


if __name__ == "__main__":
    main()
