"""open_clip's `hf-hub:ORG/REPO` models, offline from a hub cache built in the test (recorded weights, changed
weights refused); a model's only pretrained tag; SigLIP's own sigmoid against an independent computation.

Every test points HF_HOME / HF_HUB_CACHE (and huggingface_hub's constants, read at import) at a temporary
hub cache and keeps HF_HUB_OFFLINE=1, so nothing is downloaded.
"""

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from huggingface_hub import constants
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.checkpoints import TINY_LOGIT_BIAS, TINY_LOGIT_SCALE, tiny_siglip_cfg
from expclip.demo.hub_cache import save_hub_clip
from expclip.demo.synthetic import write_faces
from expclip.stages.encoders.clip import identity, load_clip
from expclip.stages.predict.api import ZeroShotFER, class_prompts
from expclip.stages.shared import protocol
from expclip.stages.shared.heads import build_head, save_head

CPU = torch.device("cpu")
REPO = "tiny-org/tiny-clip"
KEY = "hf-hub_tiny-org_tiny-clip"
runner = CliRunner()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that huggingface_hub (and so open_clip) reads, offline; the network refused."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for name, value in (("HF_HOME", home), ("HF_HUB_CACHE", cache)):
        monkeypatch.setenv(name, str(value))
        monkeypatch.setattr(constants, name, str(value))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("a hub model was looked for on the network")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def snapshot_file(cache: Path, name: str, repo: str = REPO) -> Path:
    """A file of `main`'s snapshot, found by reading the cache's layout as written (refs/main -> snapshots/REV)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    return folder / "snapshots" / (folder / "refs" / "main").read_text() / name


def independent_model(cache: Path) -> open_clip.CLIP:
    """The snapshot's model built by hand from its config and weights, not through open_clip's hub loader."""
    config = json.loads(snapshot_file(cache, "open_clip_config.json").read_text())
    model = open_clip.CLIP(**config["model_cfg"])
    model.load_state_dict(load_file(snapshot_file(cache, "open_clip_model.safetensors")))
    return model.eval()


def test_a_hub_model_loads_offline_and_records_its_repo_and_weights(hub):
    name = save_hub_clip(hub, REPO, seed=1)
    weights = snapshot_file(hub, "open_clip_model.safetensors")
    key, config = identity(name, None, "model", "fp32")
    assert name == f"hf-hub:{REPO}" and key == KEY
    assert config == {"model": name, "pretrained": "open_clip_model.safetensors",
                      "pretrained_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "transform": "model",
                      "precision": "float32"}
    encoder = load_clip(name, None, device=CPU, precision="fp32", transform="model")
    want = independent_model(hub).state_dict()
    got = encoder.model.state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert encoder.attrs["logit_scale"] == pytest.approx(TINY_LOGIT_SCALE) and encoder.width == 32
    assert "logit_bias" not in encoder.attrs  # a softmax-trained CLIP: no bias recorded, none applied
    assert {k: encoder.attrs[k] for k in config} == config


def test_hub_names_are_refused_in_one_line(hub):
    missing = f"no open_clip_config.json for nobody/missing in the hub cache {hub} (HF_HUB_OFFLINE=1: nothing is " \
              "downloaded; set HF_HOME to the cache that has it)"
    cases = [("hf-hub:nobody/missing", None, f"hf-hub:nobody/missing: {missing}"),
             ("hf-hub:just-a-name", None, "hf-hub:just-a-name: a hub model is named hf-hub:ORG/REPO "
                                          "(e.g. hf-hub:timm/ViT-B-16-SigLIP)"),
             (f"hf-hub:{REPO}", "openai", f"hf-hub:{REPO}: a hub model brings its own weights; "
                                          "drop pretrained='openai'")]
    save_hub_clip(hub, REPO)
    for name, pretrained, message in cases:
        with pytest.raises(ExpclipError) as e:
            identity(name, pretrained, "model", "fp32")
        assert str(e.value) == message
    snapshot_file(hub, "open_clip_model.safetensors").unlink()
    with pytest.raises(ExpclipError) as e:
        identity(f"hf-hub:{REPO}", None, "model", "fp32")
    assert str(e.value) == (f"hf-hub:{REPO}: no open_clip_model.safetensors or open_clip_pytorch_model.bin for "
                            f"{REPO} in the hub cache {hub} (HF_HUB_OFFLINE=1: nothing is downloaded; set HF_HOME "
                            "to the cache that has it)")


@pytest.mark.parametrize("model, tag", [("ViT-B-16-SigLIP", "webli"), ("ViT-B-32", "openai")])
def test_a_model_without_openai_weights_takes_its_only_tag(model, tag):
    assert open_clip.list_pretrained_tags_by_model(model).count(tag) == 1
    key, config = identity(model, None, "model", "fp32")
    assert key == f"{model}@{tag}" and config["pretrained"] == tag and config["pretrained_sha256"] == ""


def test_a_model_with_several_tags_and_no_openai_lists_them():
    tags = open_clip.list_pretrained_tags_by_model("convnext_base_w")
    assert len(tags) > 1 and "openai" not in tags
    with pytest.raises(ExpclipError) as e:
        identity("convnext_base_w", None, "model", "fp32")
    assert str(e.value) == (f"convnext_base_w has no 'openai' weights; choose a pretrained tag ({', '.join(tags)}) "
                            "or a weights file")


def test_extract_search_and_predict_with_a_hub_clip_and_its_changed_weights(hub, tmp_path, tiny_clip):
    """extract beside another CLIP, --clip-key, search's queries and predict --head by exactly the recorded
    weights; after the repo's `main` moves to other weights, search and predict --head refuse in one line."""
    name = save_hub_clip(hub, REPO, seed=1)
    faces, cache = tmp_path / "faces", tmp_path / "faces.h5"
    write_faces(faces, ["happy", "sad"], 3, size=40)
    for clip in (tiny_clip, name):
        made = runner.invoke(app, ["extract", str(faces), "--out", str(cache), "--clip-model", clip, "--no-teacher",
                                   "--num-workers", "0", "--device", "cpu"])
        assert made.exit_code == 0, made.output
    sha = hashlib.sha256(snapshot_file(hub, "open_clip_model.safetensors").read_bytes()).hexdigest()
    with CacheReader(cache) as r:
        assert KEY in r.image_keys() and len(r.image_keys()) == 2
        attrs = r.image_attrs(KEY)
        rows, ids = r.image(KEY).astype(np.float64), r.items().ids
    assert (attrs["model"], attrs["pretrained"], attrs["pretrained_sha256"]) == (name, "open_clip_model.safetensors",
                                                                                  sha)
    text = "a photo of a sad face"
    search = ["search", str(cache), "--text", text, "-k", "6", "--device", "cpu", "--clip-key", KEY,
              "--json", str(tmp_path / "hits.json")]
    result = runner.invoke(app, search)
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        query = independent_model(hub).encode_text(open_clip.get_tokenizer("ViT-B-32")([text])).double().numpy()[0]
    cosines = rows @ query / np.linalg.norm(rows, axis=1) / np.linalg.norm(query)
    hits = json.loads((tmp_path / "hits.json").read_text())["hits"][0]
    assert [h["id"] for h in hits] == [ids[i] for i in np.argsort(-cosines)]
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(cosines)[::-1], atol=2e-3)

    key, config = identity(name, None, "model", "fp32")
    head = tmp_path / "head"
    save_head(build_head("linear", 32, 16), "linear", {"clip": config, "clip_key": key, "logit_scale": 20.0}, head)
    predict = ["predict", str(faces / "sad" / "0.png"), "--head", str(head), "--detector", "none", "--device", "cpu",
               "--json", str(tmp_path / "p.json")]
    result = runner.invoke(app, predict)
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "p.json").read_text())
    assert len(written["records"]) == 1
    assert written["provenance"]["clip_model"] == name and written["provenance"]["clip_sha256"] == sha

    save_hub_clip(hub, REPO, seed=2)  # `main` now names other weights
    now = hashlib.sha256(snapshot_file(hub, "open_clip_model.safetensors").read_bytes()).hexdigest()
    assert now != sha
    result = runner.invoke(app, search)
    assert result.exit_code == 2 and " ".join(result.output.split()) == (
        f"error: {cache}: the CLIP weights behind {KEY} are not the ones that wrote the cache (now "
        f"open_clip_model.safetensors sha256 {now}); queries would land in another space")
    result = runner.invoke(app, predict)
    assert result.exit_code == 2 and " ".join(result.output.split()) == (
        f"error: {name}: the hub cache now holds other weights: open_clip_model.safetensors has sha256 {now}, not "
        f"the recorded {sha}; restore those weights, or extract and fit again with these")


def hand_scores(folder: Path, crops: list, classes: list[str], w: torch.Tensor | None = None):
    """(model, (n, C) class scores): the mean over a class's prompts of cos(image, prompt), each mapped by `w`
    when given, computed with open_clip directly from the snapshot folder."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the tiny models' standard tokenizer
    w = torch.eye(32, dtype=torch.float64) if w is None else w
    with torch.no_grad():
        x = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(c) for c in crops])).double()
                                          @ w.T, dim=-1)
        scores = []
        for name in classes:
            prompts = class_prompts(name, protocol.prompt_sets()["ensemble_five"])
            t = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)).double() @ w.T, dim=-1)
            scores.append((x @ t.T).mean(1))
    return model, torch.stack(scores, 1)


def test_siglip_probabilities_are_its_own_sigmoid_and_through_a_head_the_heads_softmax(hub, tmp_path):
    """Plain SigLIP: sigmoid(scale·score + bias) per class with the model's own scale and bias (read from its
    weights); through a head (trained with a softmax at the scale it records): the softmax of scale·score."""
    repo = "tiny-org/tiny-siglip"
    name = save_hub_clip(hub, repo, model_cfg=tiny_siglip_cfg(32))
    folder = snapshot_file(hub, "open_clip_config.json", repo).parent
    crops = [Image.open(p).convert("RGB") for p in write_faces(tmp_path / "faces", ["happy", "sad"], 2, size=40)]
    classes = ["happy", "Sadness", "surprise"]
    fer = ZeroShotFER(name, classes=classes, prompt_set="ensemble_five", detector="none", device="cpu")
    model, scores = hand_scores(folder, crops, classes)
    scale, bias = model.logit_scale.exp().item(), model.logit_bias.item()
    assert (scale, bias) == (pytest.approx(TINY_LOGIT_SCALE), pytest.approx(TINY_LOGIT_BIAS))
    assert fer.encoder.attrs["logit_bias"] == pytest.approx(TINY_LOGIT_BIAS)
    got = fer.probabilities(crops)
    torch.testing.assert_close(got, torch.sigmoid(scale * scores + bias).float(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got.sum(1), torch.ones(len(crops)), atol=1e-2)  # a sigmoid each, not a softmax

    torch.manual_seed(0)
    key, config = identity(name, None, "model", "fp32")
    save_head(build_head("linear", 32, 16), "linear", {"clip": config, "clip_key": key, "logit_scale": 20.0},
              tmp_path / "head")
    headed = ZeroShotFER(name, head=tmp_path / "head", classes=classes, prompt_set="ensemble_five",
                         detector="none", device="cpu")
    _, mapped = hand_scores(folder, crops, classes, headed.head.linear_weight().double())
    torch.testing.assert_close(headed.probabilities(crops), torch.softmax(20.0 * mapped, 1).float(),
                               rtol=1e-4, atol=1e-5)



def test_changed_weights_are_told_apart_from_other_weights_chosen_on_purpose():
    from expclip.stages.encoders.clip import check_recorded

    folder = {"model": "local-dir:/a/my-clip", "pretrained": "/a/my-clip/w.safetensors", "pretrained_sha256": "1"}
    moved = {**folder, "model": "local-dir:/b/my-clip", "pretrained": "/b/my-clip/w.safetensors"}
    check_recorded("local-dir:/b/my-clip", folder, moved)  # the same weights on another machine
    with pytest.raises(ExpclipError) as e:
        check_recorded("local-dir:/b/my-clip", folder, {**moved, "pretrained_sha256": "2"})
    assert str(e.value) == ("local-dir:/b/my-clip: its weights changed: /b/my-clip/w.safetensors has sha256 2, not "
                            "the recorded 1; restore those weights, or extract and fit again with these")
    path = {"model": "ViT-B-32", "pretrained": "/w/a.pt", "pretrained_sha256": "1"}
    with pytest.raises(ExpclipError, match="its weights changed: /w/a.pt has sha256 2, not the recorded 1"):
        check_recorded("ViT-B-32", path, {**path, "pretrained_sha256": "2"})
    tag = {"model": "ViT-B-32", "pretrained": "openai", "pretrained_sha256": ""}
    for chosen in ({**path, "pretrained": "/w/b.pt", "pretrained_sha256": "2"}, tag):  # left to the head check
        check_recorded("ViT-B-32", path, chosen)
        check_recorded("ViT-B-32", tag, {**chosen, "model": "ViT-B-32"})


def test_a_presets_clip_override_may_name_a_hub_model(hub):
    from expclip import preset_run, presets
    from expclip.stages.extract.plan import clip_identity_for

    name = save_hub_clip(hub, REPO)
    cfg = preset_run._extract_config(presets.load("paper-vit-b-32"), {"clip_model": name}, "cpu")
    assert (cfg.clip_model, cfg.clip_pretrained) == (name, None)  # the preset's `openai` tag is dropped
    assert clip_identity_for(cfg, "fp32")[0] == KEY + "+official"  # the paper runs use the official transform


def test_a_repo_with_only_pytorch_bin_weights_records_and_loads_that_file(hub):
    name = save_hub_clip(hub, REPO, seed=3)
    safe = snapshot_file(hub, "open_clip_model.safetensors")
    state = load_file(safe)
    safe.unlink()
    torch.save(state, safe.with_name("open_clip_pytorch_model.bin"))  # as older repos ship them
    _, config = identity(name, None, "model", "fp32")
    binary = snapshot_file(hub, "open_clip_pytorch_model.bin")
    assert (config["pretrained"], config["pretrained_sha256"]) == (
        "open_clip_pytorch_model.bin", hashlib.sha256(binary.read_bytes()).hexdigest())
    got = load_clip(name, None, device=CPU, precision="fp32", transform="model").model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
