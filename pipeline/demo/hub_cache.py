"""A tiny open_clip model laid out as the Hugging Face hub cache holds a downloaded repo, for offline tests.

`huggingface_hub` keeps a repo under `HF_HUB_CACHE/models--ORG--REPO/`: each
file's bytes once in `blobs/`, a `snapshots/REV/` folder of links to them per
revision, and `refs/main` naming the revision `main` resolves to. With
`HF_HUB_OFFLINE=1`, open_clip's `hf-hub:ORG/REPO` reads exactly this.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from expclip.demo.checkpoints import save_tiny_clip
from expclip.stages.shared.clip_identity import HF_HUB


def save_hub_clip(hub_cache: Path, repo: str, *, seed: int = 0, model_cfg: dict | None = None) -> str:
    """Write a tiny random open_clip model (`save_tiny_clip`'s files) as revision `main` of `repo` ("ORG/REPO")
    in `hub_cache`; returns its `hf-hub:` name. Called again with other weights, it adds a revision and moves
    `main` to it, as pulling an updated repo does."""
    folder = Path(hub_cache) / f"models--{repo.replace('/', '--')}"
    with tempfile.TemporaryDirectory() as staging:
        save_tiny_clip(Path(staging), seed=seed, model_cfg=model_cfg)
        files = {p.name: p.read_bytes() for p in sorted(Path(staging).iterdir())}
    revision = hashlib.sha1(b"".join(hashlib.sha256(data).digest() for data in files.values())).hexdigest()
    snapshot = folder / "snapshots" / revision
    shutil.rmtree(snapshot, ignore_errors=True)
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return HF_HUB + repo
