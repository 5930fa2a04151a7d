"""The CLIP encoder of stage one: raw image and text features of a frozen open_clip model.

Features are stored before L2-normalisation (docs/cache-format.md) so later
stages can choose; the model's own logit_scale travels with them because the
official loss multiplies by it and it is not 100 for every checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import PIL.Image
import torch
from open_clip.factory import _find_checkpoint_in_dir
from safetensors import SafetensorError

from expclip.base.errors import ExpclipError
from expclip.cache.format import encoder_key
from expclip.stages.encoders.hub import hub_files
from expclip.stages.encoders.provenance import sha256_file, versions_json
from expclip.stages.encoders.transforms import OnDevice, check_transform, official_transform, split_on_device
from expclip.stages.shared.clip_identity import HF_HUB, LOCAL_DIR, clip_identity, model_name, own_weights
from expclip.stages.shared.precision import autocast, check_precision, recorded_name
from expclip.stages.shared.vocabulary import MODEL_TRANSFORM, OFFICIAL_TRANSFORM

DEFAULT_TAG = "openai"


def tokenizer(model_ref: str) -> Callable:
    """open_clip's tokenizer for `model_ref`, built once per process: open_clip reads the vocabulary files again on
    every call, and predict, search and extract load a CLIP many times over. Keyed by the model's text config too,
    so a local folder whose config changed gets a tokenizer of its own."""
    text_cfg = (open_clip.get_model_config(model_ref) or {}).get("text_cfg", {})
    return _tokenizer(model_ref, json.dumps(text_cfg, sort_keys=True, default=str))


@functools.lru_cache(maxsize=16)
def _tokenizer(model_ref: str, text_cfg: str) -> Callable:
    return open_clip.get_tokenizer(model_ref)


@dataclass
class ClipEncoder:
    """A frozen open_clip model with its tokenizer, image transform and cache provenance.

    `transform` runs in DataLoader workers and gives uint8 pixels where the
    model's pipeline allows it; `on_device` finishes them on the GPU
    (transforms.OnDevice: the same arithmetic, 4x less to copy).
    """

    model: torch.nn.Module
    tokenizer: Callable
    transform: Callable[[PIL.Image.Image], torch.Tensor]
    on_device: OnDevice
    device: torch.device
    precision: str
    key: str
    attrs: dict

    @classmethod
    def wrap(cls, model: torch.nn.Module, model_ref: str, preprocess: Callable, *, key: str, config: dict,
             device: torch.device, precision: str) -> ClipEncoder:
        """Freeze a built open_clip model and record its provenance (also for models built elsewhere, e.g. a
        benchmark's random ones); `config` is `identity`'s."""
        model.eval().requires_grad_(False)
        attrs = {
            **config,
            "logit_scale": model.logit_scale.detach().float().exp().item(),
            **_bias(model),
            "embed_dim": int(open_clip.get_model_config(model_ref)["embed_dim"]),
            "versions": versions_json(),
        }
        pipeline = preprocess if config["transform"] == MODEL_TRANSFORM else official_transform()
        transform, on_device = split_on_device(pipeline)
        return cls(model=model, tokenizer=tokenizer(model_ref), transform=transform,
                   on_device=on_device, device=device, precision=precision, key=key, attrs=attrs)

    @property
    def width(self) -> int:
        return int(self.attrs["embed_dim"])

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels from `transform` -> (B, D) raw float32 features, left on the device."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            features = self.model.encode_image(self.on_device(pixels.to(self.device, non_blocking=True)))
        return features.float()

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """K prompts -> (K, D) raw float32 `encode_text` features on the CPU."""
        tokens = self.tokenizer(prompts).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            features = self.model.encode_text(tokens)
        return features.float().cpu()


def _bias(model: torch.nn.Module) -> dict:
    """{"logit_bias": b} for a sigmoid-trained model (SigLIP: its logits are scale·cos + b), else nothing."""
    bias = getattr(model, "logit_bias", None)
    return {} if bias is None else {"logit_bias": bias.detach().float().item()}


def _resolve_weights(name: str, pretrained: str | None) -> tuple[str, str, str]:
    """(model, pretrained, pretrained_sha256) as recorded; refuses unknown names and tags. A hub repo records the
    name of its weights file in the repo (its snapshot path differs from machine to machine) and its sha256."""
    if name.startswith(HF_HUB):
        if pretrained is not None:
            raise ExpclipError(f"{name}: a hub model brings its own weights; drop pretrained={pretrained!r}")
        weights = hub_files(name)[1]
        return name, Path(weights).name, sha256_file(weights)
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):]).resolve()
        if pretrained is not None:
            raise ExpclipError(f"{name}: a local-dir model brings its own weights; drop pretrained={pretrained!r}")
        if not (folder / "open_clip_config.json").is_file():
            raise ExpclipError(f"{name}: no open_clip_config.json in folder {folder}")
        weights = _find_checkpoint_in_dir(folder)  # the file open_clip itself will load
        if weights is None:
            raise ExpclipError(f"{name}: no weights file (*.safetensors, *.bin, *.pth) in folder {folder}")
        return LOCAL_DIR + str(folder), weights, sha256_file(weights)
    models = open_clip.list_models()
    if name not in models:
        raise ExpclipError(
            f"unknown open_clip model {name!r}; choose one of: {', '.join(models)} (or local-dir:PATH, "
            "or hf-hub:ORG/REPO)"
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained is None:
        if DEFAULT_TAG not in tags and len(tags) != 1:
            raise ExpclipError(
                f"{name} has no {DEFAULT_TAG!r} weights; choose a pretrained tag "
                f"({', '.join(tags) or 'none known'}) or a weights file"
            )
        pretrained = DEFAULT_TAG if DEFAULT_TAG in tags else tags[0]  # a model's only weights need no naming
    tag = pretrained.lower().replace("-", "_")  # open_clip's own tag normalisation
    if tag in tags:
        return name, tag, ""
    if not os.path.isfile(pretrained):
        raise ExpclipError(
            f"unknown pretrained tag {pretrained!r} for {name} and no such file; "
            f"choose one of: {', '.join(tags) or 'none known'} (or a weights file path)"
        )
    path = str(Path(pretrained).resolve())
    return name, path, sha256_file(path)


def identity(name: str, pretrained: str | None, transform: str, precision: str) -> tuple[str, dict]:
    """Cache key and configuration of an encoder, known without loading it (so a complete
    cache is recognised without touching the GPU)."""
    check_transform(transform)
    check_precision(precision)
    model_ref, weights, weights_sha = _resolve_weights(name, pretrained)
    if own_weights(model_ref):
        parts = [model_name(model_ref)]
    else:
        parts = [model_ref, Path(weights).stem if weights_sha else weights]
    config = {"model": model_ref, "pretrained": weights, "pretrained_sha256": weights_sha,
              "transform": transform, "precision": recorded_name(precision)}
    return encoder_key(parts, transform == OFFICIAL_TRANSFORM), config


# Encoders `load_clip` keeps while a `kept_loaded` block runs, by their loading arguments; None outside.
_kept: dict[tuple, ClipEncoder] | None = None


@contextmanager
def kept_loaded() -> Iterator[None]:
    """Within the block, `load_clip` returns the encoder it loaded before for the same arguments: a run that
    extracts many datasets with one CLIP (`expclip run`: 17 caches) loads it once, not once per cache (seconds
    each for a ViT-L/14). The encoders are let go when the block ends."""
    global _kept
    outer, _kept = _kept, {} if _kept is None else _kept
    try:
        yield
    finally:
        _kept = outer


def load_clip(
    name: str, pretrained: str | None, *, device: torch.device, precision: str, transform: str,
    recorded: dict | None = None,
) -> ClipEncoder:
    """Load a frozen open_clip model (`name`, `local-dir:PATH` or `hf-hub:ORG/REPO`) in eval mode on `device`;
    `recorded`: the CLIP provenance a head or cache recorded, whose weights these must be when it is this model."""
    key, config = identity(name, pretrained, transform, precision)
    if recorded:
        check_recorded(name, recorded, config)
    same = (key, *sorted(config.items()), str(device), precision)  # the weights' sha256 included
    if _kept is not None and same in _kept:
        return _kept[same]
    encoder = _load(key, config, name, device, precision)
    if _kept is not None:
        _kept[same] = encoder
    return encoder


def check_recorded(name: str, recorded: dict, config: dict) -> None:
    """Refuse other weights than recorded from the same source (a hub repo, a folder, one weights path): a repo's
    `main` or a file may have changed since the head or cache was made, and features of other weights live in
    another space. Another tag or file chosen on purpose is not this check's to judge."""
    (model, weights), (now_model, now) = clip_identity(recorded), clip_identity(config)
    same_source = own_weights(config["model"]) or recorded.get("pretrained") == config["pretrained"]
    if model == now_model and same_source and recorded.get("pretrained_sha256") and weights != now:
        where = "the hub cache now holds other weights" if name.startswith(HF_HUB) else "its weights changed"
        raise ExpclipError(f"{name}: {where}: {config['pretrained']} has sha256 {now or '-'}, not the recorded "
                           f"{weights}; restore those weights, or extract and fit again with these")


def _load(key: str, config: dict, name: str, device: torch.device, precision: str) -> ClipEncoder:
    model_ref, weights = config["model"], config["pretrained"]
    try:
        if model_ref.startswith(HF_HUB):
            model, preprocess = _hub_model(name, config, device)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_ref, pretrained=None if own_weights(model_ref) else weights, device=device
            )
        return ClipEncoder.wrap(model, model_ref, preprocess, key=key, config=config, device=device,
                                precision=precision)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError, SafetensorError) as error:
        raise ExpclipError(f"cannot load open_clip model {name!r} with weights {weights!r}: {_why(error)}") from None


def _hub_model(name: str, config: dict, device: torch.device) -> tuple[torch.nn.Module, Callable]:
    """A hub model with the very weights file whose sha256 `config` records (open_clip would look it up again)."""
    path = hub_files(name)[1]
    check_recorded(name, config, {**config, "pretrained_sha256": sha256_file(path)})  # changed since `identity`
    # pretrained_text=False: no base text-tower weights fetched for a model whose own weights follow.
    model, _, preprocess = open_clip.create_model_and_transforms(
        config["model"], load_weights=False, pretrained_text=False, device=device
    )
    open_clip.load_checkpoint(model, path)
    return model, preprocess


def _why(error: Exception) -> str:
    """One line for what torch, safetensors or open_clip said: a state-dict mismatch lists every tensor over
    many lines, and torch's refusal of a pickle is a page of advice to load it unsafely, around one reason."""
    text = str(error)
    if isinstance(error, KeyError):
        return f"no {text} in its configuration or weights"
    refused = "WeightsUnpickler error:"
    if refused in text:
        reason = text.split(refused, 1)[1].strip().split("\n\n")[0].split(". ")[0].strip()
        return f"torch's safe loader (weights_only) refuses the file: {reason}"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return " ".join(lines[:2]) + more
