"""Search queries as raw CLIP features, by the encoder a cache's image key records (stage one's loader).

The encoder is reloaded from the key's provenance (model, weights, transform,
precision) and must resolve to the same key and weights: a query encoded by
other weights than the cache's items would be compared across two spaces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.stages.encoders.clip import ClipEncoder, identity, load_clip
from expclip.stages.encoders.images import DecodeError, load_image
from expclip.stages.shared.clip_identity import recorded_pretrained
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.precision import query_precision


def cache_encoder(cache: Path, key: str, device: str) -> ClipEncoder:
    """The CLIP encoder that wrote `key` in `cache`; refuses one whose weights changed since."""
    with CacheReader(cache) as reader:
        attrs = reader.image_attrs(key)
    model = str(attrs.get("model", ""))
    pretrained = recorded_pretrained(attrs)
    precision = query_precision(str(attrs.get("precision", "float32")))
    transform = str(attrs.get("transform", ""))
    if not model or not transform:
        raise ExpclipError(f"{cache}: /{fmt.image_path(key)} does not record its CLIP model and transform")
    found, config = identity(model, pretrained, transform, precision)
    if found != key or config.get("pretrained_sha256", "") != attrs.get("pretrained_sha256", ""):
        raise ExpclipError(f"{cache}: the CLIP weights behind {key} are not the ones that wrote the cache "
                           f"(now {config['pretrained']} sha256 {config.get('pretrained_sha256') or '-'}); "
                           "queries would land in another space")
    return load_clip(model, pretrained, device=resolve_device(device), precision=precision, transform=transform)


def encode_queries(encoder: ClipEncoder, texts: list[str], images: list[Path]) -> np.ndarray:
    """(len(texts) + len(images), D) raw float32 features: texts first, then images."""
    parts = []
    if texts:
        parts.append(encoder.encode_texts(texts))
    if images:
        pixels = torch.stack([encoder.transform(_image(Path(p))) for p in images])
        parts.append(encoder.encode_images(pixels).cpu())
    return torch.cat(parts).numpy().astype(np.float32)


def _image(path: Path):
    try:
        return load_image(path)
    except (DecodeError, OSError) as e:
        raise ExpclipError(f"--image {path}: cannot be read as an image ({e})") from None
