"""predict on pre-cropped faces against the CLIP encoder's own rate: faces/s, one run, one machine.

Rows, all with the same model, device, precision and batch size:
(a) `predict` with `--detector none` over N pre-cropped JPEG faces in a folder,
    end to end as the CLI runs it (`records.predict_inputs`: decoding, the
    transform, batched forward passes, records);
(b) the CLIP image encoder alone on the same faces already transformed, in
    batches of the same size: the rate (a) should approach;
(c) (a) at batch size 1, on the first `--per-picture` faces: one forward pass per
    picture, as predict ran before crops were batched.

--tiny: the demo's tiny CLIP (a smoke test). Otherwise `--model` (open_clip's
name, e.g. ViT-B-32) is built with random weights (`open_clip.create_model`, nothing
downloaded) and enters predict through `api.load_clip`, its loading seam; random
weights cost what trained ones do.
Run: python benchmarks/predict_rate.py [--model ViT-B-32] [--faces 512] [--batch-size N] [--tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import matplotlib.cbook
import open_clip
import torch
from machine import describe
from PIL import Image

from expclip.demo.checkpoints import save_tiny_clip
from expclip.stages.encoders.clip import ClipEncoder
from expclip.stages.predict import api
from expclip.stages.predict.media import listing
from expclip.stages.predict.records import predict_inputs
from expclip.stages.shared.vocabulary import BATCH_SIZES

PHOTO = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@dataclass
class Row:
    name: str
    faces: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.faces / self.seconds


def write_faces(folder: Path, n: int) -> Path:
    """n different face crops of the sample photo, 160 px JPEGs (the size of common FER crops)."""
    photo = Image.open(PHOTO).convert("RGB")
    for k in range(n):
        dx, dy = (7 * k) % 100, (5 * k) % 80
        photo.crop((110 + dx, 60 + dy, 390 + dx, 340 + dy)).resize((160, 160)).save(folder / f"{k:05d}.jpg")
    return folder


def random_encoder(name: str) -> ClipEncoder:
    """open_clip's `name` with random weights, wrapped as load_clip wraps a loaded one (fp32 on the CPU)."""
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    config = {"model": name, "pretrained": "random", "pretrained_sha256": "", "transform": "model",
              "precision": "float32"}
    return ClipEncoder.wrap(model, name, preprocess, key=f"{name}@random", config=config,
                            device=torch.device("cpu"), precision="fp32")


def model_for(args: argparse.Namespace, workdir: Path, batch_size: int) -> api.ZeroShotFER:
    if args.tiny:
        return api.ZeroShotFER(save_tiny_clip(workdir / "clip"), detector="none", device="cpu", batch_size=batch_size)
    encoder = random_encoder(args.model)
    with mock.patch.object(api, "load_clip", lambda *a, **k: encoder):
        return api.ZeroShotFER(args.model, detector="none", device="cpu", batch_size=batch_size)


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--faces", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZES["cpu"])
    parser.add_argument("--per-picture", type=int, default=64, help="faces for row (c)")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "faces").mkdir()
        folder = write_faces(workdir / "faces", args.faces)
        fer = model_for(args, workdir, args.batch_size)
        warm = sorted(folder.iterdir())[: args.batch_size]
        predict_inputs(fer, listing(warm))  # start-up: first passes, allocator
        rows = [Row("(a) predict --detector none", args.faces, timed(lambda: predict_inputs(fer, listing([folder]))))]
        pixels = fer.pixels([Image.open(p).convert("RGB") for p in sorted(folder.iterdir())])
        rows.append(Row("(b) CLIP encoder alone", args.faces, timed(lambda: fer.encode_pixels(pixels))))
        few = sorted(folder.iterdir())[: args.per_picture]
        fer.batch_size = 1
        rows.append(Row("(c) predict, batch size 1", len(few), timed(lambda: predict_inputs(fer, listing(few)))))
    name = "tiny CLIP (demo)" if args.tiny else f"{args.model}, random weights"
    print(f"predict on pre-cropped faces | {name} | CPU fp32 | batch size {args.batch_size} | {describe()}")
    print(f"{'row':32} {'faces':>6} {'faces/s':>9}")
    for row in rows:
        print(f"{row.name:32} {row.faces:>6} {row.rate:>9.1f}")
    print(f"(a)/(b): {rows[0].rate / rows[1].rate:.2f}")
    return rows


if __name__ == "__main__":
    main()
