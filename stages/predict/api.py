"""`ZeroShotFER`: Exp-CLIP as a library — faces in, {class: probability} out, for any class names.

Only CLIP and (optionally) a trained head are loaded, never the teacher. Class
scores are the paper's zero-shot rule, computed by the code `evaluate` and
search use (`stages.shared.scoring`): a face's score for a class is the mean
of the cosines between the face and the class's prompts, both mapped by the
head (plain CLIP space without one); probabilities are the softmax of those
scores times the logit scale (the head's, else CLIP's), or without a head for
a sigmoid-trained CLIP (SigLIP) each class's own sigmoid(scale·score + bias),
which need not sum to 1 (`scoring.probabilities`). A clip is the mean of
its frames' mapped features, normalised (the paper's video rule), over the
largest face of each frame, or over each face track (`predict_tracks`: one
verdict per person).

Inputs: one item or a list of paths, PIL images and numpy arrays (`items`); the
crops of every picture are encoded `batch_size` at a time (`batches`: extract's
default per device), under extract's precision rule (bf16 autocast on CUDA).
Face records are flat (`face_verdicts`): `pandas.DataFrame(records)` is one row
per face with a column per number.

Classes: names of the protocol's classes (or their synonyms: "happy", "angry",
...) take the chosen prompt set's prompts for that class; any other name gets
the set's templates (its prompts for Happiness, with the word replaced). A str
is one comma-separated list, as `--classes` takes it. Two names of one class
("happy" twice, "angry" and "Anger") are refused: they would share its
probability between them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from expclip.base.errors import ExpclipError
from expclip.base.version import __version__
from expclip.stages.encoders.clip import load_clip
from expclip.stages.predict.batches import Batches
from expclip.stages.predict.faces import Box, Detector, crop
from expclip.stages.predict.items import as_picture, items
from expclip.stages.predict.media import Unreadable
from expclip.stages.predict.tracks import link
from expclip.stages.shared import protocol
from expclip.stages.shared.clip_identity import clip_identity
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.digests import file_sha256
from expclip.stages.shared.heads import Head, head_files, load_head
from expclip.stages.shared.precision import resolve_precision
from expclip.stages.shared.scoring import Space, class_targets, head_space, logit_rule, probabilities
from expclip.stages.shared.vocabulary import (
    AUTO,
    BATCH_SIZES,
    DEFAULT_CLIP,
    DETECTORS,
    MODEL_TRANSFORM,
    PREDICT_PROMPT_SET,
)

BASIC = protocol.class_order()[:7]  # the seven basic expressions


class ZeroShotFER:
    """Load once; then `predict` pictures, `scores`/`probabilities` of face crops, `encode_images`."""

    def __init__(self, clip_model: str = DEFAULT_CLIP, clip_pretrained: str | None = None, *,
                 head: str | Path | Head | None = None, classes: str | Sequence[str] | None = None,
                 prompt_set: str = PREDICT_PROMPT_SET, detector: str = DETECTORS[0], detector_model: Path | None = None,
                 device: str = AUTO, transform: str = MODEL_TRANSFORM, precision: str = AUTO,
                 batch_size: int | None = None) -> None:
        names = class_names(BASIC if classes is None else classes)  # refused before any model is loaded
        named_prompt_set(prompt_set)
        if batch_size is not None and batch_size < 1:
            raise ExpclipError(f"--batch-size {batch_size}: encode at least 1 face per pass")
        self.device = resolve_device(device)
        self.batch_size = batch_size or BATCH_SIZES.get(self.device.type, BATCH_SIZES["cpu"])
        self.head_path = Path(head) if isinstance(head, (str, Path)) else None
        self.head = load_head(Path(head)) if isinstance(head, (str, Path)) else head
        self.encoder = load_clip(clip_model, clip_pretrained, device=self.device,
                                 precision=resolve_precision(precision, self.device), transform=transform,
                                 recorded=self.head.clip if self.head is not None else None)
        if (
            self.head is not None
            and self.head.encoder is not None
            and self.head.encoder != clip_identity(self.encoder.attrs)
        ):
            raise ExpclipError(f"--head was trained on CLIP {self.head.describe_encoder()}, not on {clip_model} "
                               f"{self.encoder.attrs.get('pretrained', '')}; load the CLIP it was trained on")
        self.space: Space = head_space(self.head, self.device)
        self.scale, self.bias = logit_rule(self.head, self.encoder.attrs)
        self.detector = Detector(detector, detector_model)
        self.set_classes(names, prompt_set)

    def set_classes(self, classes: str | Sequence[str], prompt_set: str = PREDICT_PROMPT_SET) -> None:
        """Score these classes from now on (prompts encoded once, here)."""
        names, chosen = class_names(classes), named_prompt_set(prompt_set)
        texts, index = [], []
        for k, name in enumerate(names):
            for text in class_prompts(name, chosen):
                texts.append(text)
                index.append(k)
        features = self.encoder.encode_texts(texts).double().numpy()
        self.classes, self.prompt_set = names, prompt_set
        self.targets = class_targets(self.space, features, np.array(index), len(names), "logits")

    def pixels(self, faces: Sequence[Image.Image]) -> torch.Tensor | None:
        """(n, 3, H, W) face crops through the encoder's own transform; None for no crops."""
        return torch.stack([self.encoder.transform(f.convert("RGB")) for f in faces]) if faces else None

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, d) raw CLIP features of transformed crops, `batch_size` to a forward pass."""
        parts = [self.encoder.encode_images(pixels[a : a + self.batch_size])
                 for a in range(0, len(pixels), self.batch_size)]
        return torch.cat(parts).float() if parts else torch.empty(0, self.encoder.width)

    def encode_images(self, faces: Sequence[Image.Image]) -> torch.Tensor:
        """(n, d) raw CLIP features of face crops (the encoder's own transform)."""
        pixels = self.pixels(faces)
        return self.encode_pixels(pixels) if pixels is not None else torch.empty(0, self.encoder.width)

    def batches(self) -> Batches:
        """A queue that encodes the crops of many pictures and frames `batch_size` at a time."""
        return Batches(self.encode_pixels, self.batch_size)

    def scores(self, faces: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """(n, C) class logits of face crops (or of raw features (n, d), or clips' frames (n, T, d))."""
        features = faces if isinstance(faces, torch.Tensor) else self.encode_images(faces)
        cosines = (self.space.images(features.to(self.device)) @ self.targets.T).float().cpu()
        return self.scale * cosines + (self.bias or 0.0)

    def probabilities(self, faces: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        return probabilities(self.scores(faces), self.bias)

    def faces(self, image: Image.Image) -> list[tuple[Box, Image.Image]]:
        """The detector's faces in a picture, largest first, with their crops."""
        if image.width < 1 or image.height < 1:  # OpenCV and the transforms fail on no pixels
            raise ExpclipError(f"a picture of {image.width}×{image.height} pixels: no pixels to look for faces in")
        return [(box, crop(image, box)) for box in self.detector.detect(image)]

    def locate(self, image: Image.Image, most: int | None = None) -> tuple[list[Box], torch.Tensor | None]:
        """The picture's faces (the `most` largest; all by default) and their transformed crops, for `batches`."""
        faces = self.faces(image)[:most]
        return [box for box, _ in faces], self.pixels([c for _, c in faces])

    def detect(self, image: Image.Image, most: int | None = None) -> tuple[list[Box], torch.Tensor]:
        """The picture's faces and their CLIP features (n, d), encoded once for every verdict below."""
        return self.detect_all([image], most)[0]

    def detect_all(self, images: Sequence[Image.Image],
                   most: int | None = None) -> list[tuple[list[Box], torch.Tensor]]:
        """`detect` of each picture, their crops encoded together in batches."""
        found: list[tuple[list[Box], torch.Tensor]] = []
        batches = self.batches()
        for image in images:
            boxes, pixels = self.locate(image, most)
            batches.put(pixels, lambda features, boxes=boxes: found.append((boxes, features)))
        batches.flush()
        return found

    def predict(self, images: object, *, bgr: bool = False, on_error: str = "raise") -> list[dict]:
        """One flat dict per face (`face_verdicts`), with `image`: its position in `images`.

        `images`: one item or a list of paths, PIL images, numpy arrays (`items`: H×W×3 uint8 RGB, or BGR with
        `bgr=True`; H×W grayscale). Crops of all pictures are encoded `batch_size` at a time. A file that cannot
        be read is an ExpclipError naming it; with `on_error="record"` it gives `{image, error}` instead and the
        others are still scored (as `expclip predict` skips such files)."""
        if on_error not in ("raise", "record"):
            raise ExpclipError(f"on_error={on_error!r}: choose 'raise' or 'record'")
        found: list[list[dict]] = []  # per item, filled when its batch is encoded
        batches = self.batches()
        for n, item in enumerate(items(images)):
            try:
                image = as_picture(item, bgr=bgr)
            except Unreadable as e:
                if on_error == "raise":
                    raise
                found.append([{"image": n, "error": str(e)}])
                continue
            boxes, pixels = self.locate(image)
            found.append([])
            batches.put(pixels, lambda f, n=n, boxes=boxes, slot=found[-1]:
                        slot.extend({"image": n, **face} for face in self.face_verdicts(boxes, f)))
        batches.flush()
        return [record for slot in found for record in slot]

    def predict_clip(self, frames: Sequence[Image.Image]) -> dict | None:
        """The paper's video rule over the largest face of each frame; None when no frame shows a face."""
        return self.clip_verdict(self.detect_all(frames, most=1))

    def predict_tracks(self, frames: Sequence[Image.Image]) -> list[dict]:
        """The paper's video rule per face track, longest first: track, positions (in `frames`), boxes, verdict."""
        return self.track_verdicts(self.detect_all(frames))

    def face_verdicts(self, boxes: list[Box], features: torch.Tensor) -> list[dict]:
        """One dict per face of a picture (`detect`'s output): face; its box flat (x, y, w, h) and as a list; the
        detector's `score` (None where it gives none: Haar, none); the verdict (`verdict`)."""
        p = self.probabilities(features) if boxes else []
        return [{"face": k, "x": b.x, "y": b.y, "w": b.w, "h": b.h, "score": b.score, "box": b.as_list(),
                 **self.verdict(p[k])} for k, b in enumerate(boxes)]

    def clip_verdict(self, frames: Sequence[tuple[list[Box], torch.Tensor]]) -> dict | None:
        """`predict_clip` on frames already through `detect`."""
        largest = [features[0] for boxes, features in frames if boxes]
        if not largest:
            return None
        return {"frames_with_a_face": len(largest), **self.verdict(self.clip_probabilities(torch.stack(largest)))}

    def track_verdicts(self, frames: Sequence[tuple[list[Box], torch.Tensor]],
                       scored: Collection[int] | None = None) -> list[dict]:
        """`predict_tracks` on frames already through `detect`: faces linked across all `frames`; each track's
        verdict from its faces at the `scored` positions (all by default; a track seen at none of them has no
        probabilities). Per track: positions, faces (the face's index in each frame), boxes."""
        found = []
        for k, t in enumerate(link([[(box, j) for j, box in enumerate(boxes)] for boxes, _ in frames])):
            chosen = [frames[p][1][j] for p, j in zip(t.positions, t.faces) if scored is None or p in scored]
            verdict = self.verdict(self.clip_probabilities(torch.stack(chosen))) if chosen else {}
            found.append({"track": k, "positions": t.positions, "faces": t.faces,
                          "boxes": [b.as_list() for b in t.boxes], **verdict})
        return found

    def clip_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(C,) probabilities of one clip from its faces' CLIP features (T, d): the paper's mean of the mapped
        features, normalised."""
        return self.probabilities(features.unsqueeze(0))[0]

    def verdict(self, p: torch.Tensor) -> dict:
        """{top: class, p_<class>: p for each class, probabilities: {class: p}} of one probability vector: flat
        columns for tables (pandas, CSV) and the dict for code."""
        probabilities = {c: float(v) for c, v in zip(self.classes, p)}
        return {"top": self.classes[int(p.argmax())], **{f"p_{c}": v for c, v in probabilities.items()},
                "probabilities": probabilities}

    def provenance(self, head: Path | None = None) -> dict:
        """What produced the records (as evaluate's carry their CLIP key and cache): versions, CLIP and weights,
        head file and sha256 (`head`: its path when the head was passed loaded), prompts, classes, detector."""
        path = head or self.head_path
        weights = None if path is None else path if path.suffix == ".pth" else head_files(path)[0]
        recorded = self.head.meta.get("weights_sha256") if self.head is not None else None  # passed loaded
        clip = self.encoder.attrs
        return {"expclip_version": __version__, "clip_model": clip["model"], "clip_pretrained": clip["pretrained"],
                "clip_sha256": clip.get("pretrained_sha256") or None, "clip_transform": clip["transform"],
                "precision": self.encoder.precision, "head": None if path is None else str(path),
                "head_sha256": file_sha256(weights) if weights is not None else recorded,
                "prompt_set": self.prompt_set,
                "classes": list(self.classes), "detector": self.detector.kind,
                "detector_model": str(getattr(self.detector, "model", "")) or None}


def class_names(classes: str | Sequence[str]) -> list[str]:
    """The classes asked for, the one rule for `--classes` and the API: a str is one comma-separated list; blank
    names are dropped; at least two, and no class named twice (a synonym or another case counts as the same)."""
    if isinstance(classes, str):
        classes = classes.split(",")
    elif not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
        raise ExpclipError(f"--classes: give a list of class names (str) or one comma-separated str, "
                           f"not {type(classes).__name__}")
    names = [c.strip() for c in classes if c.strip()]
    if len(names) < 2:
        raise ExpclipError(f"--classes: name at least two classes (got {', '.join(names) or 'none'})")
    first: dict[str, str] = {}
    twice = []
    for name in names:
        meaning = protocol.canonical_class(name) or " ".join(name.lower().split())  # as class_prompts reads it
        if meaning not in first:
            first[meaning] = name
        elif first[meaning] == name:
            twice.append(f"{name!r} is named twice")
        else:
            twice.append(f"{first[meaning]!r} and {name!r} are both {meaning}")
    if twice:
        raise ExpclipError(f"--classes: {'; '.join(twice)}; name each class once")
    return names


def named_prompt_set(prompt_set: str) -> dict[str, list[str]]:
    """A prompt set by name (canonical class -> prompts), or one line naming the choices."""
    sets = protocol.prompt_sets()
    if prompt_set not in sets:
        raise ExpclipError(f"--prompt-set {prompt_set!r}: choose one of {', '.join(sets)}")
    return sets[prompt_set]


def class_prompts(name: str, prompt_set: dict[str, list[str]]) -> list[str]:
    """A class's prompts in a set: the protocol's for a known class or synonym, else the set's templates."""
    canonical = protocol.canonical_class(name)
    if canonical is not None and prompt_set.get(canonical):
        return list(prompt_set[canonical])
    templates = [p.replace("happiness", "{}") for p in prompt_set["Happiness"] if "happiness" in p]
    return [t.format(name.lower()) for t in templates]
