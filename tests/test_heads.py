"""Head files: our safetensors+JSON pair, the official .pth format, and refusing pickles that run code."""

import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

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
    tagged = Head(
        module=build_head(kind, 16, 24), kind=kind, meta={"clip": {"model": "ViT-B-32", "pretrained": "openai"}}
    )
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


@pytest.mark.parametrize("text, found", [("{not json", r":1: not valid JSON \(Expecting property name"),
                                         ("[1, 2]", ": a head card is a JSON object")])
def test_damaged_head_card_is_named(tmp_path, text, found):
    weights, card = save_head(build_head("linear", 4, 6), "linear", {"clip_key": "k"}, tmp_path / "h")
    card.write_text(text)
    with pytest.raises(ExpclipError, match=f"h.json{found}"):
        load_head(weights)


def _card(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_card(path: Path, fields: dict, weights: Path) -> None:
    """A card as another writer could make it, its checksums computed by the documented rule (canonical JSON)."""
    fields = {**fields, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    path.write_text(json.dumps({**fields, "card_sha256": hashlib.sha256(canonical.encode()).hexdigest()}))


def _flip(path: Path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


RERUN = "re-run fit-head to write it again"


def test_flipped_weight_or_header_bytes_are_refused_by_the_cards_sha256(tmp_path):
    """8 flipped weight bytes once gave other verdicts, a flipped header byte a KeyError: both are one error."""
    weights, card = save_head(build_head("linear", 16, 24), "linear", {"clip_key": "k"}, tmp_path / "h")
    assert _card(card)["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    clean = weights.read_bytes()
    for offset in range(len(clean) - 8, len(clean)):  # the last weight's four bytes and its neighbour's
        _flip(weights, offset, 0x01)
    damaged = f"{weights}: its bytes do not match the weights_sha256 that h.json records (damaged or replaced); {RERUN}"
    with pytest.raises(ExpclipError) as info:
        load_head(tmp_path / "h")
    assert str(info.value) == damaged
    weights.write_bytes(clean)
    _flip(weights, clean.index(b'"d"') + 1, 0x01)  # the metadata key 'd' becomes 'e'
    with pytest.raises(ExpclipError) as info:
        load_head(weights)
    assert str(info.value) == damaged
    card.unlink()  # no record: the header is still checked field by field
    with pytest.raises(ExpclipError, match=r"h\.safetensors: not an expclip head \(safetensors metadata .*'e': '16'"):
        load_head(weights)


def test_an_edited_or_pre_checksum_card_is_refused(tmp_path):
    weights, card = save_head(
        build_head("linear", 4, 6), "linear", {"clip_key": "k", "logit_scale": 20.0}, tmp_path / "h"
    )
    fields = _card(card)
    card.write_text(json.dumps({**fields, "logit_scale": -5.0}))  # an edit that would invert every verdict
    with pytest.raises(ExpclipError) as info:
        load_head(weights)
    assert str(info.value) == f"{card}: its fields do not match its card_sha256 (damaged or edited); {RERUN}"
    card.write_text(json.dumps({"clip_key": "k", "logit_scale": 20.0}))  # as expclip wrote cards before
    with pytest.raises(ExpclipError) as info:
        load_head(weights)
    assert str(info.value) == f"{card}: records no weights_sha256 (written before expclip checked heads); {RERUN}"
    card.write_text(json.dumps(fields, indent=3, sort_keys=True))  # the same fields spelled otherwise: accepted
    assert load_head(weights).meta == {"clip_key": "k", "logit_scale": 20.0}


@pytest.mark.parametrize("field, value, message", [
    ("logit_scale", -5.0, "logit_scale must be a finite number > 0; found -5.0"),
    ("logit_scale", 0, "logit_scale must be a finite number > 0; found 0"),
    ("logit_scale", "20", "logit_scale must be a finite number > 0; found '20'"),
    ("clip", {"model": 3}, "clip.model must be a text; found 3"),
    ("clip", {"model": "ViT-B-32", "transform": ["model"]}, "clip.transform must be a text; found ['model']"),
    ("clip", "ViT-B-32", "clip must be an object; found 'ViT-B-32'"),
    ("clip_key", 7, "clip_key must be a text; found 7"),
    ("d", "4", "d must be a positive integer; found '4'"),
    ("dt", 0, "dt must be a positive integer; found 0"),
    ("kind", "conv", "kind must be one of linear, mlp; found 'conv'"),
    ("history", [{"epoch": 1, "loss": None}], "history must be a list of epochs, each with a finite loss; found "
                                              "[{'epoch': 1, 'loss': None}]"),
    ("caches", {"path": "a.h5"}, "caches must be a list of objects; found {'path': 'a.h5'}"),
    ("n_train", True, "n_train must be a positive integer; found True"),
])
def test_card_fields_are_checked_on_writing_and_on_loading(tmp_path, field, value, message):
    with pytest.raises(ExpclipError) as info:
        save_head(build_head("linear", 4, 6), "linear", {field: value}, tmp_path / "new")
    assert str(info.value) == f"{tmp_path / 'new.json'}: {message}" and not list(tmp_path.iterdir())  # nothing written
    weights, card = save_head(build_head("linear", 4, 6), "linear", {}, tmp_path / "h")
    _write_card(card, {field: value}, weights)  # checksums right, field wrong
    with pytest.raises(ExpclipError) as info:
        load_head(weights)
    assert str(info.value) == f"{card}: {message}"


def test_non_finite_weights_are_refused_with_or_without_a_record(tmp_path):
    module = build_head("linear", 4, 6)
    with torch.no_grad():
        module.weight[2, 1] = float("nan")
    with pytest.raises(ExpclipError, match=r"h\.safetensors: weight holds NaN or infinite values"):
        save_head(module, "linear", {}, tmp_path / "h")
    assert not list(tmp_path.iterdir())
    metadata = {"format": "expclip-head", "kind": "linear", "d": "4", "dt": "6"}
    save_file({"weight": module.weight.detach()}, str(tmp_path / "h.safetensors"), metadata=metadata)  # another writer
    with pytest.raises(ExpclipError) as info:
        load_head(tmp_path / "h")
    assert str(info.value) == (f"{tmp_path / 'h.safetensors'}: weight holds NaN or infinite values; "
                               "a head's weights must be finite")
    _write_card(tmp_path / "h.json", {}, tmp_path / "h.safetensors")  # recorded as it is: still refused
    with pytest.raises(ExpclipError, match="weight holds NaN or infinite values"):
        load_head(tmp_path / "h")
    save_file({"weight": torch.ones(6, 4, dtype=torch.int32)}, str(tmp_path / "i.safetensors"), metadata=metadata)
    with pytest.raises(ExpclipError, match=r"i\.safetensors: weight holds torch\.int32 values"):
        load_head(tmp_path / "i")


@pytest.mark.parametrize("weight, found", [
    (torch.full((6, 4), float("inf")), "mlp.weight holds NaN or infinite values"),
    (torch.zeros(0, 4), r"mlp.weight has shape \(0, 4\); a head maps d > 0 to Dt > 0"),
])
def test_official_heads_are_checked_for_finiteness_and_shape(tmp_path, weight, found):
    torch.save({"mlp.weight": weight}, tmp_path / "o.pth")
    with pytest.raises(ExpclipError, match=r"o\.pth: " + found):
        load_head(tmp_path / "o.pth")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_head_files_follow_the_umask(tmp_path, umask, mode):
    """safetensors' own writer made HEAD.safetensors 0600 whatever the umask."""
    old = os.umask(umask)
    try:
        files = save_head(build_head("linear", 4, 6), "linear", {}, tmp_path / "h")
        export_official(load_head(tmp_path / "h"), tmp_path / "h.pth")
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in (*files, tmp_path / "h.pth")] == [mode] * 3
