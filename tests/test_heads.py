"""Head files: our safetensors+JSON pair, the official .pth format, and refusing pickles that run code."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from expclip.base.errors import ExpclipError
from expclip.stages.shared.heads import Head, build_head, export_official, load_head, save_head


def _marker_pickle(path: Path, marker: Path, *, plain: bool) -> None:
    """A head file whose unpickling would create `marker` (a stand-in for arbitrary code)."""

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    state = {"mlp.weight": Payload()}
    if plain:
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("name", ["HEAD", "HEAD.safetensors", "HEAD.json"])
def test_save_load_round_trip(tmp_path, kind, name):
    module = build_head(kind, 16, 24)
    weights, card = save_head(module, kind, {"clip_key": "k", "n_train": 3}, tmp_path / name)
    assert (weights.name, card.name) == ("HEAD.safetensors", "HEAD.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["HEAD.json", "HEAD.safetensors"]  # no temporaries left
    for path in (tmp_path / "HEAD", weights, card):
        head = load_head(path)
        assert head.kind == kind and head.meta == {"clip_key": "k", "n_train": 3} and not head.official
        for a, b in zip(head.module.state_dict().values(), module.state_dict().values()):
            assert torch.equal(a, b)
    x = torch.randn(5, 16)
    assert torch.equal(load_head(tmp_path / "HEAD").module(x), module(x))
    assert (load_head(tmp_path / "HEAD").linear_weight() is None) == (kind == "mlp")


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_dimensions_and_encoder_identity_are_properties_of_the_head(kind):
    clip = {"model": "local-dir:/somewhere/tiny-clip", "pretrained": "/somewhere/tiny-clip/w.safetensors",
            "pretrained_sha256": "ab12", "transform": "model"}
    head = Head(module=build_head(kind, 16, 24), kind=kind, meta={"clip_key": "tiny-clip", "clip": clip})
    assert (head.d, head.dt) == (16, 24)
    assert head.encoder == ("tiny-clip", "ab12") and head.has_provenance  # a folder by its name, weights by hash
    tagged = Head(module=build_head(kind, 16, 24), kind=kind, meta={"clip": {"model": "ViT-B-32", "pretrained": "openai"}})
    assert tagged.encoder == ("ViT-B-32", "openai")
    keyed = Head(module=build_head(kind, 16, 24), kind=kind, meta={"clip_key": "ViT-B-32@openai"})
    assert keyed.encoder is None and keyed.has_provenance
    bare = Head(module=build_head(kind, 16, 24), kind=kind)
    assert bare.encoder is None and not bare.has_provenance and bare.official


def test_weights_without_card_still_load(tmp_path):
    save_head(build_head("linear", 4, 6), "linear", {"clip_key": "k"}, tmp_path / "H")
    (tmp_path / "H.json").unlink()
    head = load_head(tmp_path / "H.safetensors")
    assert head.meta == {"kind": "linear", "d": "4", "dt": "6"} and head.linear_weight().shape == (6, 4)


def test_official_round_trip(tmp_path):
    module = build_head("linear", 16, 24)
    export_official(Head(module, "linear", {"x": 1}), tmp_path / "official.pth")
    state = torch.load(tmp_path / "official.pth", map_location="cpu", weights_only=True)
    assert list(state) == ["mlp.weight"] and state["mlp.weight"].shape == (24, 16)
    assert state["mlp.weight"].dtype == torch.float32
    head = load_head(tmp_path / "official.pth")
    assert head.official and head.meta == {} and head.kind == "linear"
    assert torch.equal(head.linear_weight(), module.weight.detach())


def test_official_export_refuses_mlp(tmp_path):
    with pytest.raises(ExpclipError, match="linear head only"):
        export_official(Head(build_head("mlp", 4, 6), "mlp", {}), tmp_path / "x.pth")


@pytest.mark.parametrize("plain", [False, True], ids=["torch.save", "pickle.dumps"])
def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path, plain):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    _marker_pickle(path, marker, plain=plain)
    with pytest.raises(ExpclipError, match=r"evil\.pth: refused") as info:
        load_head(path)
    assert not marker.exists()
    if not plain:
        assert "os.makedirs" in str(info.value)  # says what the file wanted to call


def test_marker_pickle_does_run_code_when_unpickled_plainly(tmp_path):
    """Control for the test above: the payload is live, so 'marker absent' means it was not run."""
    marker = tmp_path / "code-ran"
    _marker_pickle(tmp_path / "evil.pth", marker, plain=True)
    pickle.loads((tmp_path / "evil.pth").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "state, found",
    [
        ({"weight": torch.zeros(3, 2)}, r"needs key 'mlp.weight'; found \['weight'\]"),
        ({"mlp.weight": torch.zeros(3)}, r"2-D float \(Dt, d\) tensor; found \(3,\)"),
        ([torch.zeros(3, 2)], "found list"),
    ],
)
def test_official_with_wrong_contents(tmp_path, state, found):
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ExpclipError, match=r"bad\.pth: .*" + found):
        load_head(path)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(ExpclipError, match="no head weights"):
        load_head(tmp_path / "nothing")
    with pytest.raises(ExpclipError, match="no such head file"):
        load_head(tmp_path / "nothing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(ExpclipError, match=r"junk\.pth: refused"):
        load_head(tmp_path / "junk.pth")
    with pytest.raises(ExpclipError, match="--head: unknown head kind 'conv'"):
        build_head("conv", 2, 2)


@pytest.mark.parametrize("text, found", [("{not json", "not a readable head card"), ("[1, 2]", "a head card is a JSON object")])
def test_damaged_head_card_is_named(tmp_path, text, found):
    weights, card = save_head(build_head("linear", 4, 6), "linear", {"clip_key": "k"}, tmp_path / "h")
    card.write_text(text)
    with pytest.raises(ExpclipError, match=f"h.json: {found}"):
        load_head(weights)
