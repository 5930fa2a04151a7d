"""Seconds of pre-training for the demo's tiny encoders, so that its numbers show the method working.

Random encoders score at chance and put every face in one class: that shows a
newcomer nothing and would hide a broken pipeline. Here the tiny checkpoints of
`checkpoints` are loaded back through the real loaders, trained on the CPU on
drawn faces (never the demo's own files) and saved back in the same format:

- CLIP: its text tower first learns that the protocol's captions of one class
  say the same thing (contrastive over the captions), then its image tower
  learns to pick each face's class among one caption per class (CLIP's loss,
  the text tower fixed), so zero-shot prompts work;
- the teacher (BLIP-2 Flan-T5): its vision tower, Q-Former and projection learn
  to describe the drawn facial actions: the mean of the 32 projected queries is
  pulled towards a learnt embedding of the face's action parameters (mouth
  curve and opening, brow, eyes, smirk) and away from the other classes'. The
  queries are what the T5 encoder pools into the teacher feature, so that
  feature separates the actions too; the T5 stays random (training through it
  would triple the cost).

Everything is seeded. The models remain synthetic toys; their numbers are no benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import open_clip
import PIL.Image
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from expclip.demo.checkpoints import CLIP_WEIGHTS, save_tiny_blip2, save_tiny_clip
from expclip.demo.synthetic import draw_face, expression_of
from expclip.stages.shared import protocol

# transformers starts BLIP-2's vision tower at std 1e-10 and its queries at zero, where
# LayerNorm's gradient explodes; BLIP-2's own training starts both at std 0.02.
TRAINABLE_INIT = 0.02


@dataclass(frozen=True)
class Schedule:
    """How long each tiny encoder trains (AdamW): long enough that both stand well above chance at every seed
    (benchmarks/demo_seeds.py), short enough for a demo."""

    faces_per_class: int = 300
    caption_steps: int = 30
    clip_steps: int = 500
    teacher_steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50  # steps of linear warm-up for the image towers: a ViT trained from scratch collapses without
    # Of every loss here. For CLIP's that is a scale of 10, not its logit scale (50): faces must come close to their
    # captions, not merely closer than to the others', or the head, fitted on faces alone, maps prompts elsewhere.
    temperature: float = 0.1


@dataclass(frozen=True)
class Faces:
    """Drawn faces and their class indices into `classes`."""

    images: list[PIL.Image.Image]
    labels: torch.Tensor
    classes: list[str]


def drawn_faces(classes: list[str], per_class: int, seed: int) -> Faces:
    """`per_class` faces of each class at the demo's image and clip sizes and at clip-like intensities."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(classes):
        for _ in range(per_class):
            size = int(rng.choice([48, 64]))
            images.append(draw_face(expression_of(name), size, rng, intensity=float(rng.uniform(0.3, 1.0))))
            labels.append(label)
    return Faces(images, torch.tensor(labels), list(classes))


def _optimise(parameters: list[torch.nn.Parameter], steps: int, lr: float, warmup: int = 1) -> Iterator[int]:
    """AdamW with linear warm-up: yields each step for the caller's backward pass, then steps."""
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    for step in range(steps):
        optimizer.zero_grad()
        yield step
        optimizer.step()
        scheduler.step()


def _captions(classes: list[str]) -> tuple[list[str], torch.Tensor]:
    """Every distinct prompt of the protocol's prompt sets for `classes`, and its class index."""
    pairs = sorted({(prompt, label) for label, name in enumerate(classes)
                    for prompts in protocol.prompt_sets().values() for prompt in prompts[name]})
    return [p for p, _ in pairs], torch.tensor([label for _, label in pairs])


def _same_class_loss(features: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Supervised contrastive loss: each row's softmax over the other rows should fall on its own class."""
    eye = torch.eye(len(labels), dtype=torch.bool)
    log_p = (scale * features @ features.T).masked_fill(eye, -torch.inf).log_softmax(dim=1).masked_fill(eye, 0.0)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    return -((log_p * positive).sum(1) / positive.sum(1)).mean()


def save_pretrained_clip(folder: Path, faces: Faces, schedule: Schedule = Schedule(), *, seed: int = 0) -> str:
    """A tiny open_clip ViT saved to `folder`, trained on `faces` with protocol captions; returns its model name."""
    name = save_tiny_clip(folder, seed=seed)
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval().requires_grad_(False)  # each phase unfreezes what it trains; logit_scale stays the checkpoint's
    texts, text_labels = _captions(faces.classes)
    tokens = open_clip.get_tokenizer(name)(texts)
    # The 49,408-row token embedding stays random: AdamW over it would cost more than all the rest.
    frozen = ("visual.", "token_embedding", "logit_scale")
    text_tower = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
    for _ in _optimise(text_tower, schedule.caption_steps, schedule.lr):
        text = F.normalize(model.encode_text(tokens), dim=-1)
        _same_class_loss(text, text_labels, 1 / schedule.temperature).backward()
    model.requires_grad_(False)
    with torch.no_grad():
        captions = F.normalize(model.encode_text(tokens), dim=-1)
    by_class = [torch.nonzero(text_labels == c).flatten() for c in range(len(faces.classes))]
    pixels = torch.stack([preprocess(image) for image in faces.images])
    batches = torch.Generator().manual_seed(seed)
    for _ in _optimise(list(model.visual.parameters()), schedule.clip_steps, schedule.lr, schedule.warmup):
        rows = torch.randint(len(pixels), (schedule.batch_size,), generator=batches)
        one_each = torch.cat([ids[torch.randint(len(ids), (1,), generator=batches)] for ids in by_class])
        image = F.normalize(model.encode_image(pixels[rows]), dim=-1)
        F.cross_entropy(image @ captions[one_each].T / schedule.temperature, faces.labels[rows]).backward()
    save_file(model.state_dict(), str(Path(folder) / CLIP_WEIGHTS))
    return name


def save_pretrained_teacher(folder: Path, faces: Faces, schedule: Schedule = Schedule(), *, seed: int = 0) -> Path:
    """A tiny BLIP-2 Flan-T5 saved to `folder` (with its processor), its queries trained to describe facial actions."""
    folder = save_tiny_blip2(folder, seed=seed, vision={"initializer_range": TRAINABLE_INIT})
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration.from_pretrained(folder)
    model.eval().requires_grad_(False)
    torch.nn.init.normal_(model.query_tokens, std=TRAINABLE_INIT)
    processor = Blip2Processor.from_pretrained(folder)
    pixels = processor.image_processor(images=faces.images, return_tensors="pt")["pixel_values"]
    actions = torch.tensor([astuple(expression_of(name)) for name in faces.classes], dtype=torch.float32)
    describe = torch.nn.Linear(actions.shape[1], model.config.text_config.d_model)
    trained = [model.query_tokens, *describe.parameters()]
    trained += [p for m in (model.vision_model, model.qformer, model.language_projection) for p in m.parameters()]
    batches = torch.Generator().manual_seed(seed)
    for _ in _optimise(trained, schedule.teacher_steps, schedule.lr, schedule.warmup):
        rows = torch.randint(len(pixels), (schedule.batch_size,), generator=batches)
        queries = model.get_image_features(pixel_values=pixels[rows]).pooler_output.mean(dim=1)
        targets = F.normalize(describe(actions), dim=-1).T / schedule.temperature
        y = faces.labels[rows]
        # The centred term finds what tells faces apart while the random queries still look all alike.
        (F.cross_entropy(F.normalize(queries, dim=-1) @ targets, y)
         + F.cross_entropy(F.normalize(queries - queries.mean(dim=0), dim=-1) @ targets, y)).backward()
    model.requires_grad_(False).save_pretrained(folder)
    return folder
