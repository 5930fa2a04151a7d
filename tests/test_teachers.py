"""Teacher families behind one front door: each against an independent computation, their identity and provenance."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from blip_reference import blip2_image_tokens
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    LlamaConfig,
    T5Config,
)

from expclip.base.errors import ExpclipError
from expclip.cache.reader import CacheReader
from expclip.demo.checkpoints import save_tiny_blip2_opt, save_tiny_instructblip
from expclip.demo.synthetic import EXPRESSIONS, draw_face, write_faces
from expclip.stages.encoders import provenance
from expclip.stages.encoders.base import ImageEncoder, Teacher, TextEncoder
from expclip.stages.encoders.clip import load_clip
from expclip.stages.encoders.teacher import FAMILIES, family_of, identity, load_teacher
from expclip.stages.extract import ExtractConfig, extract, sources
from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION

CPU = torch.device("cpu")
TINY_LLAMA = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2}


@pytest.fixture(scope="session")
def tiny_blip2_opt(tmp_path_factory) -> Path:
    return save_tiny_blip2_opt(tmp_path_factory.mktemp("tiny-blip2-opt"))


@pytest.fixture(scope="session")
def tiny_instructblip(tmp_path_factory) -> Path:
    return save_tiny_instructblip(tmp_path_factory.mktemp("tiny-instructblip"))


@pytest.fixture(scope="module")
def folders(tiny_blip2, tiny_blip2_opt, tiny_instructblip) -> dict[str, Path]:
    """One tiny checkpoint per family, by family name."""
    return {"blip2-t5": tiny_blip2, "blip2-opt": tiny_blip2_opt, "instructblip-t5": tiny_instructblip}


@pytest.fixture(scope="module")
def teachers(folders) -> dict[str, Teacher]:
    return {name: load_teacher(str(folder), DEFAULT_INSTRUCTION, device=CPU, precision="fp32", transform="model")
            for name, folder in folders.items()}


@pytest.fixture(scope="module")
def faces() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [draw_face(EXPRESSIONS[name], 48, rng) for name in ("Happiness", "Anger", "Surprise")]


def _batch(teacher: Teacher, faces: list[Image.Image]) -> torch.Tensor:
    return torch.stack([teacher.transform(face) for face in faces])


def test_blip2_opt_features_equal_independent_computation(teachers, tiny_blip2_opt, faces):
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2_opt).eval()
    processor = Blip2Processor.from_pretrained(tiny_blip2_opt)
    pixels = processor.image_processor(images=faces, return_tensors="pt")["pixel_values"]
    ids = processor.tokenizer(DEFAULT_INSTRUCTION, return_tensors="pt")["input_ids"]
    assert processor.tokenizer.convert_ids_to_tokens(int(ids[0, 0])) == "</s>"  # OPT's own BOS
    assert model.config.image_token_id not in ids
    with torch.no_grad():
        image_tokens = blip2_image_tokens(model, pixels)
        words = model.language_model.model.decoder.embed_tokens(ids).expand(len(faces), -1, -1)
        embeds = torch.cat([image_tokens, words], dim=1)
        assert embeds.shape[1] == 32 + ids.shape[1]
        opt = model.language_model.model  # OPTModel: the decoder stack, final layer norm included, no head
        assert opt.decoder.final_layer_norm is not None
        hidden = opt(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long))
        expected = hidden.last_hidden_state.mean(dim=1)
    teacher = teachers["blip2-opt"]
    got = teacher.encode_images(_batch(teacher, faces))
    assert got.shape == (3, 48) and got.dtype == torch.float32 and got.device == CPU
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[0] - got[1]).abs().max() > 1e-4  # images matter
    assert not hasattr(teacher.model.language_model, "lm_head")  # never runs, dropped
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training


def test_instructblip_features_equal_independent_computation(teachers, tiny_instructblip, faces):
    model = InstructBlipForConditionalGeneration.from_pretrained(tiny_instructblip).eval()
    processor = InstructBlipProcessor.from_pretrained(tiny_instructblip)
    pixels = processor.image_processor(images=faces, return_tensors="pt")["pixel_values"]
    ids = processor.tokenizer(DEFAULT_INSTRUCTION, return_tensors="pt")["input_ids"]
    assert processor.tokenizer.convert_ids_to_tokens(int(ids[0, -1])) == "</s>"
    qformer = processor.qformer_tokenizer(DEFAULT_INSTRUCTION, return_tensors="pt")
    q_tokens = processor.qformer_tokenizer.convert_ids_to_tokens(qformer["input_ids"][0])
    assert (q_tokens[0], q_tokens[-1]) == ("[CLS]", "[SEP]")
    n = len(faces)
    with torch.no_grad():
        patches = model.vision_model(pixel_values=pixels).last_hidden_state
        out = model.qformer(
            input_ids=qformer["input_ids"].expand(n, -1),
            attention_mask=torch.cat([torch.ones(n, 32, dtype=torch.long), qformer["attention_mask"].expand(n, -1)], 1),
            query_embeds=model.query_tokens.expand(n, -1, -1),
            encoder_hidden_states=patches,
            encoder_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
        ).last_hidden_state
        assert out.shape[1] == 32 + qformer["input_ids"].shape[1]
        image_tokens = model.language_projection(out[:, :32])
        words = model.language_model.shared(ids).expand(n, -1, -1)
        encoded = model.language_model.encoder(inputs_embeds=torch.cat([image_tokens, words], dim=1))
        expected = encoded.last_hidden_state.mean(dim=1)
    teacher = teachers["instructblip-t5"]
    got = teacher.encode_images(_batch(teacher, faces))
    assert got.shape == (3, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    language_model = teacher.model.language_model
    assert not hasattr(language_model, "decoder") and not hasattr(language_model, "lm_head")


def test_instructblip_queries_read_the_instruction(teachers, tiny_instructblip, faces):
    other = load_teacher(str(tiny_instructblip), "Describe the face.", device=CPU, precision="fp32", transform="model")
    pixels = _batch(other, faces)
    with torch.no_grad():
        a, b = teachers["instructblip-t5"].image_tokens(pixels), other.image_tokens(pixels)
    assert (a - b).abs().max() > 1e-4


def test_family_is_read_from_the_checkpoint_config(folders):
    assert [f.name for f in FAMILIES] == list(folders)
    for name, folder in folders.items():
        assert family_of(str(folder)).name == name
        assert identity(str(folder), DEFAULT_INSTRUCTION, "model", "fp32")[2]["family"] == name


@pytest.mark.parametrize(
    ("config", "found"),
    [
        (T5Config(vocab_size=32, d_model=8, d_ff=16, num_layers=1, num_heads=1, d_kv=8), "model_type 't5')"),
        (
            Blip2Config(text_config=LlamaConfig(**TINY_LLAMA).to_dict()),
            "model_type 'blip-2', text_config.model_type 'llama'",
        ),
        (
            InstructBlipConfig(text_config=LlamaConfig(**TINY_LLAMA).to_dict()),
            "model_type 'instructblip', text_config.model_type 'llama'",
        ),
    ],
    ids=["plain-t5", "blip2-llama", "instructblip-vicuna"],
)
def test_unsupported_checkpoint_is_refused_listing_the_families(tmp_path, config, found):
    config.save_pretrained(tmp_path / "ckpt")  # the family is refused from the config, before any weights
    for call in (lambda: identity(str(tmp_path / "ckpt"), "x", "model", "fp32"),
                 lambda: load_teacher(str(tmp_path / "ckpt"), "x", device=CPU, precision="fp32", transform="model")):
        with pytest.raises(ExpclipError) as caught:
            call()
        message = str(caught.value)
        assert found in message and str(tmp_path / "ckpt") in message
        assert all(family.name in message for family in FAMILIES)


def test_a_folder_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExpclipError, match="cannot load the teacher's config of"):
        identity(str(tmp_path / "empty"), "x", "model", "fp32")


def _listing_sha256(folder: Path) -> str:
    """The documented rule, written out: sha256 of `sha256sum`'s listing of the weight files."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def test_attributes_carry_family_model_and_weights_sha256(teachers, folders):
    for name, teacher in teachers.items():
        folder = folders[name]
        key, i_key, config = identity(str(folder), DEFAULT_INSTRUCTION, "model", "fp32")
        assert (teacher.key, teacher.instruction_key) == (key, i_key) == (folder.name, "paper")
        assert {k: teacher.attrs[k] for k in config} == config  # the compared configuration is recorded
        assert teacher.attrs["family"] == name and teacher.attrs["model"] == str(folder)
        assert teacher.attrs["weights_sha256"] == _listing_sha256(folder)
        assert "weights_sha256" not in config  # recognising a complete cache must not hash the weights
        assert teacher.attrs["pooling"] == "mean" and teacher.attrs["instruction"] == DEFAULT_INSTRUCTION
        assert (teacher.attrs["transform"], teacher.attrs["precision"]) == ("model", "float32")
        assert set(json.loads(teacher.attrs["versions"])) == {"torch", "open_clip", "transformers", "expclip"}


def test_weights_sha256_of_a_hub_id(tmp_path, tiny_blip2_opt, monkeypatch):
    """An id hashes its cached snapshot's files; without them, the commit the config names, else nothing."""
    snapshot = shutil.copytree(tiny_blip2_opt, tmp_path / "snapshot")
    monkeypatch.setattr(provenance, "snapshot_download", lambda repo, local_files_only: str(snapshot))
    assert provenance.weights_sha256("org/blip2", None) == _listing_sha256(tiny_blip2_opt)

    def not_cached(repo: str, local_files_only: bool) -> str:
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(provenance, "snapshot_download", not_cached)
    assert provenance.weights_sha256("org/blip2", "0123abc") == "commit:0123abc"
    assert provenance.weights_sha256("org/blip2", None) == ""


def test_blip2_t5_identity_is_the_one_caches_were_written_with(tiny_blip2):
    """Groups written before families existed keep their key; their configuration only gains `family`."""
    key, i_key, config = identity(str(tiny_blip2), DEFAULT_INSTRUCTION, "exp-clip-official", "bf16")
    assert (key, i_key) == (tiny_blip2.name + "+official", "paper")
    assert config == {"family": "blip2-t5", "model": str(tiny_blip2), "instruction": DEFAULT_INSTRUCTION,
                      "transform": "exp-clip-official", "precision": "bfloat16"}


def test_keys_differ_per_family(teachers):
    assert len({teacher.key for teacher in teachers.values()}) == 3
    assert len({teacher.attrs["family"] for teacher in teachers.values()}) == 3


def test_every_encoder_satisfies_the_protocols(teachers, tiny_clip):
    clip = load_clip(tiny_clip, None, device=CPU, precision="fp32", transform="model")
    assert (
        isinstance(clip, ImageEncoder) and isinstance(clip, TextEncoder) and not isinstance(clip, Teacher)
    )  # no instruction key
    assert all(isinstance(t, Teacher) and isinstance(t, ImageEncoder) for t in teachers.values())


@pytest.mark.parametrize("family", ["blip2-t5", "blip2-opt", "instructblip-t5"])
def test_bfloat16_is_close_to_float32(teachers, folders, faces, family):
    full = teachers[family]
    half = load_teacher(str(folders[family]), DEFAULT_INSTRUCTION, device=CPU, precision="bf16", transform="model")
    assert half.attrs["precision"] == "bfloat16" and half.attrs["weights_sha256"] == full.attrs["weights_sha256"]
    batch = _batch(full, faces)
    a, b = full.encode_images(batch), half.encode_images(batch)
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def _config(clip: str, teacher: Path) -> ExtractConfig:
    return ExtractConfig(clip_model=clip, teacher=str(teacher), num_workers=0, batch_size=4, device="cpu")


def test_one_cache_holds_a_group_per_family_and_refuses_a_changed_one(tmp_path, tiny_clip, folders, teachers):
    faces = tmp_path / "faces"
    write_faces(faces, ["happy", "sad"], 2, size=32)
    source = sources.resolve(faces)
    swapped = shutil.copytree(folders["blip2-t5"], tmp_path / "swapped")  # a BLIP-2 T5 folder, for now
    runs = {**folders, "blip2-t5": swapped}
    out = tmp_path / "cache.h5"
    for folder in runs.values():  # each run adds its family's group to the same cache
        extract(source, out, _config(tiny_clip, folder))
    with CacheReader(out) as r:
        assert sorted(r.teacher_keys()) == sorted((folder.name, "paper") for folder in runs.values())
        ids = r.items().ids
        for name, folder in runs.items():
            assert r.teacher_attrs(folder.name, "paper")["family"] == name
            teacher = teachers[name]
            with Image.open(faces / ids[0]) as image:
                expected = teacher.encode_images(teacher.transform(image.convert("RGB"))[None])
            np.testing.assert_allclose(r.teacher(folder.name, "paper")[0], expected[0].numpy(), rtol=2e-3, atol=2e-3)
    shutil.rmtree(swapped)
    shutil.copytree(folders["blip2-opt"], swapped)  # same folder name, hence same key: now an OPT checkpoint
    with pytest.raises(ExpclipError, match="family=blip2-opt"):
        extract(source, out, _config(tiny_clip, swapped))
