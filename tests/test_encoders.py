"""The stage-one encoders against independent computations on tiny checkpoints."""

import json
import math

import numpy as np
import open_clip
import pytest
import torch
from blip_reference import blip2_image_tokens
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from expclip.base.errors import ExpclipError
from expclip.demo.checkpoints import TINY_LOGIT_SCALE, save_tiny_blip2, save_tiny_clip
from expclip.demo.synthetic import EXPRESSIONS, draw_face, write_clips, write_faces
from expclip.stages.encoders.clip import kept_loaded, load_clip, tokenizer
from expclip.stages.encoders.provenance import sha256_file
from expclip.stages.encoders.teacher import instruction_key, load_teacher
from expclip.stages.encoders.transforms import official_transform
from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION, class_order

CPU = torch.device("cpu")
PROMPTS = ["a photo of a happy face", "an expression of anger", "sadness"]


@pytest.fixture(scope="module")
def faces() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [draw_face(EXPRESSIONS[name], 64, rng) for name in ("Happiness", "Sadness", "Surprise")]


@pytest.fixture(scope="module")
def clip(tiny_clip):
    return load_clip(tiny_clip, None, device=CPU, precision="fp32", transform="model")


@pytest.fixture(scope="module")
def teacher(tiny_blip2):
    return load_teacher(str(tiny_blip2), DEFAULT_INSTRUCTION, device=CPU, precision="fp32", transform="model")


def test_clip_image_features_equal_open_clip(clip, tiny_clip, faces):
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    model.eval()
    with torch.no_grad():
        expected = model.encode_image(torch.stack([preprocess(face) for face in faces]))
    got = clip.encode_images(torch.stack([clip.transform(face) for face in faces]))
    assert got.dtype == torch.float32 and got.device == CPU
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.norm(dim=-1).sub(1).abs().max() > 1e-3  # raw, not normalised
    # logit_scale is read from the checkpoint, not assumed to be OpenAI's 100.
    assert clip.attrs["logit_scale"] == pytest.approx(math.exp(model.logit_scale.item()))
    assert clip.attrs["logit_scale"] == pytest.approx(TINY_LOGIT_SCALE, rel=1e-5)


def test_clip_attrs_and_key(clip, tiny_clip):
    folder = tiny_clip.removeprefix("local-dir:")
    weights = folder + "/open_clip_model.safetensors"
    assert clip.attrs["pretrained"] == weights
    assert clip.attrs["pretrained_sha256"] == sha256_file(weights)
    assert clip.attrs["model"] == tiny_clip
    assert clip.attrs["embed_dim"] == 32
    assert (clip.attrs["transform"], clip.attrs["precision"]) == ("model", "float32")
    assert set(json.loads(clip.attrs["versions"])) == {"torch", "open_clip", "transformers", "expclip"}
    assert clip.key == folder.rsplit("/", 1)[1]  # a local folder contributes its base name
    assert not any(p.requires_grad for p in clip.model.parameters()) and not clip.model.training


def test_clip_text_features_equal_open_clip(clip, tiny_clip):
    model, _, _ = open_clip.create_model_and_transforms(tiny_clip)
    model.eval()
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer(tiny_clip)(PROMPTS))
    got = clip.encode_texts(PROMPTS)
    assert got.shape == (3, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_teacher_features_equal_independent_computation(teacher, tiny_blip2, faces):
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2).eval()
    processor = Blip2Processor.from_pretrained(tiny_blip2)
    tokenizer = processor.tokenizer
    pixels = processor.image_processor(images=faces, return_tensors="pt")["pixel_values"]
    ids = tokenizer(DEFAULT_INSTRUCTION, return_tensors="pt")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(int(ids[0, -1])) == "</s>" == tokenizer.eos_token
    assert model.config.image_token_id not in ids
    with torch.no_grad():
        image_tokens = blip2_image_tokens(model, pixels)
        assert image_tokens.shape == (3, 32, 48)
        words = model.language_model.shared(ids).expand(len(faces), -1, -1)
        encoded = model.language_model.encoder(inputs_embeds=torch.cat([image_tokens, words], dim=1))
        expected = encoded.last_hidden_state.mean(dim=1)

    batch = torch.stack([teacher.transform(face) for face in faces])
    torch.testing.assert_close(batch, pixels)
    got = teacher.encode_images(batch)
    assert got.shape == (3, 48) and got.dtype == torch.float32 and got.device == CPU
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[0] - got[1]).abs().max() > 1e-4  # images matter
    torch.testing.assert_close(teacher.instruction_ids, ids)


def test_teacher_drops_decoder_and_records_provenance(teacher, tiny_blip2):
    language_model = teacher.model.language_model
    assert not hasattr(language_model, "decoder") and not hasattr(language_model, "lm_head")
    assert "decoder" not in dict(language_model.named_children())
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training
    assert teacher.instruction_key == "paper"
    assert teacher.key == tiny_blip2.name
    assert teacher.attrs["model"] == str(tiny_blip2)
    assert teacher.attrs["pooling"] == "mean" and teacher.attrs["instruction"] == DEFAULT_INSTRUCTION
    assert set(json.loads(teacher.attrs["versions"])) == {"torch", "open_clip", "transformers", "expclip"}


def test_kept_loaded_loads_one_clip_once_until_the_block_ends(tmp_path):
    """Inside `kept_loaded` the same arguments give the same encoder; other weights bytes (same folder) or
    another transform load anew; after the block, a load is fresh again."""
    name = save_tiny_clip(tmp_path / "clip")
    args = dict(device=torch.device("cpu"), precision="fp32", transform="model")
    with kept_loaded():
        first = load_clip(name, None, **args)
        with kept_loaded():  # nested: the same keeper
            assert load_clip(name, None, **args) is first
        assert load_clip(name, None, **{**args, "transform": "exp-clip-official"}) is not first
        save_tiny_clip(tmp_path / "clip", seed=1)  # the folder's weights rewritten
        changed = load_clip(name, None, **args)
        assert changed is not first and changed.attrs["pretrained_sha256"] != first.attrs["pretrained_sha256"]
    assert load_clip(name, None, **args) is not changed
    assert load_clip(name, None, **args) is not load_clip(name, None, **args)


def test_a_clips_tokenizer_is_built_once_per_model_and_text_config(tmp_path):
    """The same tokenizer object for every load of one model; it tokenizes as open_clip's own; a folder whose text
    config changed (here its context length) gets a new one."""
    name = save_tiny_clip(tmp_path / "clip")
    first = load_clip(name, None, device=CPU, precision="fp32", transform="model").tokenizer
    assert load_clip(name, None, device=CPU, precision="fp32", transform="model").tokenizer is first
    prompts = ["a photo of a happy face.", "fear"]
    assert torch.equal(first(prompts), open_clip.get_tokenizer(name)(prompts))
    config = tmp_path / "clip" / "open_clip_config.json"
    changed = json.loads(config.read_text())
    changed["model_cfg"]["text_cfg"]["context_length"] = 20
    config.write_text(json.dumps(changed))
    other = tokenizer(name)
    assert other is not first and other(prompts).shape == (2, 20)


def test_instruction_key():
    assert instruction_key(DEFAULT_INSTRUCTION) == "paper"
    other = instruction_key("Describe the face.")
    assert other.startswith("sha-") and len(other) == 14 and other != instruction_key("Describe the face!")


def test_official_transform_feeds_both_encoders_the_same_tensor(tmp_path, faces):
    # The official transform yields 224x224 tensors, so these tiny models take 224x224 images.
    clip_name = save_tiny_clip(tmp_path / "clip", image_size=224)
    blip2 = save_tiny_blip2(tmp_path / "blip2", image_size=224)
    clip = load_clip(clip_name, None, device=CPU, precision="fp32", transform="exp-clip-official")
    teacher = load_teacher(str(blip2), "Describe.", device=CPU, precision="bf16", transform="exp-clip-official")
    assert clip.key.endswith("+official") and teacher.key.endswith("+official")
    assert teacher.instruction_key.startswith("sha-")
    a, b = clip.transform(faces[0]), teacher.transform(faces[0])  # uint8 from the workers ...
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.dtype == torch.uint8 and a.shape == (3, 224, 224)
    x = clip.on_device(a)  # ... finished by the encoder: bit for bit the official pipeline's float tensor
    torch.testing.assert_close(x, official_transform()(faces[0]), rtol=0, atol=0)
    torch.testing.assert_close(teacher.on_device(b), x, rtol=0, atol=0)
    plain = np.asarray(faces[0].resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255
    assert np.abs(x.permute(1, 2, 0).numpy() - plain).max() < 2 / 255  # no mean/std normalisation
    batch = torch.stack([a, b])
    assert clip.encode_images(batch).shape == (2, 32)
    assert teacher.encode_images(batch).shape == (2, 48)  # bf16 autocast path


def test_workers_ship_uint8_and_the_device_finishes_them_exactly_as_open_clip(clip, tiny_clip, faces):
    """The model's own pipeline split in two (PIL steps + PILToTensor in workers; /255 and Normalize on the
    device) gives open_clip's preprocessed tensor bit for bit, hence the same features."""
    _, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    for face in faces:
        shipped = clip.transform(face)
        assert shipped.dtype == torch.uint8
        torch.testing.assert_close(clip.on_device(shipped), preprocess(face), rtol=0, atol=0)
    batch = torch.stack([clip.transform(face) for face in faces])
    torch.testing.assert_close(
        clip.encode_images(batch), clip.encode_images(torch.stack([preprocess(f) for f in faces])), rtol=0, atol=0
    )


def test_bfloat16_clip_is_close_to_float32(clip, tiny_clip, faces):
    bf16 = load_clip(tiny_clip, None, device=CPU, precision="bf16", transform="model")
    batch = torch.stack([clip.transform(face) for face in faces])
    full, half = clip.encode_images(batch), bf16.encode_images(batch)
    assert half.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(full, half).min() > 0.99


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: load_clip("ViT-Nope-1", None, device=CPU, precision="fp32", transform="model"), "ViT-B-32"),
        (lambda: load_clip("ViT-B-32", "nope", device=CPU, precision="fp32", transform="model"), "openai"),
        (lambda: load_clip("ViT-B-32", None, device=CPU, precision="fp32", transform="crop"), "exp-clip-official"),
        (lambda: load_clip("ViT-B-32", None, device=CPU, precision="fp16", transform="model"), "bf16"),
        (lambda: load_clip("local-dir:/no/such/clip", None, device=CPU, precision="fp32", transform="model"),
         "/no/such/clip"),
        (lambda: load_teacher("/no/such/blip2", "x", device=CPU, precision="fp32", transform="model"),
         "/no/such/blip2"),
        (lambda: load_teacher("nobody/no-such-blip2", "x", device=CPU, precision="fp32", transform="model"),
         "nobody/no-such-blip2"),
    ],
)
def test_loading_errors_name_the_fault(call, needle):
    with pytest.raises(ExpclipError) as caught:
        call()
    assert needle in str(caught.value)


def test_write_faces_decodable_and_reproducible(tmp_path):
    paths = write_faces(tmp_path / "a", ["happy", "Sadness", "custom"], 2, size=40, seed=3)
    assert [p.relative_to(tmp_path / "a").as_posix() for p in paths] == [
        "happy/0.png", "happy/1.png", "Sadness/0.png", "Sadness/1.png", "custom/0.png", "custom/1.png"
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.convert("RGB").size == (40, 40)
    again = write_faces(tmp_path / "b", ["happy", "Sadness", "custom"], 2, size=40, seed=3)
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(paths, again))
    assert paths[0].read_bytes() != paths[1].read_bytes()


def test_write_clips_annotation_file(tmp_path):
    annotations = write_clips(tmp_path, [0, 4, 10], frames=[3, 1, 20], size=24, seed=1)
    assert annotations == tmp_path / "annotations.txt"
    rows = [line.split(" ") for line in annotations.read_text("utf-8").splitlines()]
    assert [(int(n), int(label)) for _, n, label in rows] == [(3, 0), (1, 4), (20, 10)]
    for (clip_dir, n, _), i in zip(rows, range(3)):
        assert clip_dir == str((tmp_path / "clips" / f"{i:05d}").resolve())
        frames = sorted(p.name for p in (tmp_path / "clips" / f"{i:05d}").iterdir())
        assert frames == [f"{f:05d}.png" for f in range(int(n))]
    with Image.open(tmp_path / "clips" / "00002" / "00019.png") as image:
        assert image.size == (24, 24)
    assert class_order()[10] == "Disappointment"
    with pytest.raises(ValueError):
        write_clips(tmp_path, [11], frames=[2])
