"""`expclip run PRESET`: the paper's presets as data, the data-root check, and the whole run on synthetic data
laid out like the real datasets (tiny 224-pixel checkpoints, since the presets use the official transform)."""

import dataclasses
import json
import shutil
from pathlib import Path

import open_clip
import pytest
import typer
from conftest import PAPER_INSTRUCTION, PAPER_TEACHER
from typer.testing import CliRunner

from expclip import cli_run, preset_run, presets
from expclip.base.errors import ExpclipError
from expclip.demo.checkpoints import save_tiny_blip2, save_tiny_clip, tiny_clip_cfg
from expclip.demo.synthetic import write_clips, write_faces
from expclip.stages.evaluate import table2
from expclip.stages.shared import protocol

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
SAMPLES = Path(__file__).resolve().parent / "data" / "annotation_samples"
PRESETS = ["paper-vit-b-16", "paper-vit-b-32", "paper-vit-l-14"]
OFFICIAL = "/data/EECS-IoannisLab/datasets"  # where the official clip lists say the frames are
SOURCES = ["CAER-S (training)", "RAFDB", "AffectNet7", "AffectNet8", "FERPlus",
           *(f"DFEW fold {k}" for k in range(1, 6)), "FERV39k", *(f"MAFW fold {k}" for k in range(1, 6)), "AFEW"]

app = typer.Typer()
app.callback()(lambda: None)  # keeps `run` a named sub-command, as in expclip.cli
app.command()(cli_run.run)
runner = CliRunner()


def test_the_registry_holds_the_three_paper_runs_and_names_them_when_asked_for_another():
    assert presets.names() == PRESETS
    paper = json.loads(presets._folder().joinpath("_exp_clip_paper_results.json").read_text("utf-8"))
    for name in PRESETS:
        preset = presets.load(name)
        assert [d.name for d in preset.evaluation] == paper["datasets"] == list(protocol.dataset_classes())
        assert set(presets.paper_numbers(preset)["exp-clip"]) == set(paper["datasets"])
        assert preset.extract.transform == "exp-clip-official" and preset.extract.teacher == PAPER_TEACHER
        assert preset.extract.instruction == PAPER_INSTRUCTION and preset.frames == 16
        official = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 512, "epochs": 5,
                    "milestones": (30,), "gamma": 0.1, "optimizer": "sgd", "head": "linear"}  # the paper's SGD run
        assert {k: getattr(preset.fit, k) for k in official} == official
    with pytest.raises(ExpclipError, match="paper-vit-b-16, paper-vit-b-32, paper-vit-l-14"):
        presets.load("paper-vit-h-14")


def test_clip_datasets_strip_the_prefix_of_the_official_lists():
    """Each clip list's official sample starts with the preset's strip_prefix (5 folds for DFEW and MAFW)."""
    preset = presets.load("paper-vit-b-16")
    for dataset in (d for d in preset.evaluation if d.kind == "clips"):
        sample = next(SAMPLES.glob(f"{dataset.name}_*"))
        assert sample.name in {Path(s).name for _, s in dataset.sources()}
        first = sample.read_text("utf-8").split()[0]
        assert first.startswith(dataset.strip_prefix + "/"), (dataset.name, first)
        assert dataset.folds == (5 if dataset.name in ("DFEW", "MAFW") else 1)


def test_packaged_paper_results_equal_the_reference():
    reference = REFERENCE / "exp_clip_paper_results.json"
    if not reference.exists():
        pytest.skip(f"reference data not found at {reference}")
    packaged = presets._folder().joinpath("_exp_clip_paper_results.json").read_text("utf-8")
    assert json.loads(packaged) == json.loads(reference.read_text("utf-8"))


def test_a_preset_file_may_extend_the_paper_part_and_bad_keys_name_the_choices(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"extends": "_paper", "extract": {"clip_model": "ViT-B-16"}, "fit": {"epochs": 2}}))
    preset = presets.load(str(mine))
    assert (preset.name, preset.fit.epochs, preset.fit.lr, preset.extract.teacher) == (
        "mine",
        2,
        1e-3,
        PAPER_TEACHER,
    )
    mine.write_text(json.dumps({"extends": "_paper", "fit": {"learning_rate": 0.1}}))
    with pytest.raises(ExpclipError, match=r"unknown key\(s\) fit.learning_rate; valid: fit.lr"):
        presets.load(str(mine))


def test_overrides_are_checked_before_any_work_and_a_model_the_paper_lacks_has_no_paper_column(tmp_path):
    preset = presets.load("paper-vit-b-32")
    with pytest.raises(ExpclipError, match="fit override.s. learning_rate: not settings; valid: lr, momentum"):
        preset_run.run_preset(preset, tmp_path, tmp_path / "out", fit_overrides={"learning_rate": 0.1})
    command = ["run", "paper-vit-b-32", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*command, "--fit", "lr=1e-3,1e-2"])
    assert result.exit_code == 2 and "--fit: give one value for lr" in result.output
    result = runner.invoke(app, [*command, "--fit", "lr"])
    assert result.exit_code == 2 and "--fit: 'lr' is not NAME=V1,V2" in result.output
    result = runner.invoke(app, [*command, "--fit", "learning_rate=0.1"])
    assert result.exit_code == 2 and "--fit: unknown name 'learning_rate'; choose from lr" in result.output
    assert not (tmp_path / "out").exists()  # a mistake in the arguments leaves no folder behind
    mine = tmp_path / "h14.json"
    mine.write_text(json.dumps({"extends": "_paper", "extract": {"clip_model": "ViT-H-14"}}))
    means = [{"dataset": "RAFDB", "method": "exp-clip", "prompt_set": "a_photo_of_a_face", "uar": 50.0, "war": 60.0}]
    mine = presets.load(str(mine))
    assert table2(means, presets.paper_numbers(mine), mine.report["prompt_set"])[0]["delta_uar"] is None
    assert table2(means, presets.paper_numbers(preset), "a_photo_of_a_face")[0]["delta_uar"] == pytest.approx(
        50.0 - 39.56)


def _clips(data: Path, work: Path, folder: str, lists: dict[str, list[tuple[str, int]]], seed: int) -> None:
    """Clips at data/folder/<sub> and the official lists naming them under OFFICIAL (frames: 3, 12 or 21)."""
    entries = [e for rows in lists.values() for e in rows]
    frames = [3 + 9 * (i % 3) for i in range(len(entries))]
    write_clips(work / folder, [label for _, label in entries], frames=frames, size=24, seed=seed)
    for i, (sub, _) in enumerate(entries):
        (data / folder / sub).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(work / folder / "clips" / f"{i:05d}", data / folder / sub)
    count = {sub: n for (sub, _), n in zip(entries, frames)}
    prefix = f"{OFFICIAL}/{'FERV39K' if folder == 'FERV39k' else folder}"
    for name, rows in lists.items():
        (data / folder / name).write_text("".join(f"{prefix}/{sub} {count[sub]} {label}\n" for sub, label in rows))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A few items of every dataset (one per class, one clip per fold), laid out as the real ones are."""
    data, work = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("work")
    write_faces(
        data / "CAER-S" / "train", ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"], 3, size=32
    )
    write_faces(data / "RAF-DB" / "test", [str(k) for k in range(1, 8)], 1, size=32, seed=1)  # RAF-DB's 1-7
    write_faces(data / "AffectNet" / "val", [str(k) for k in range(8)], 1, size=32, seed=2)  # AffectNet's 0-7
    write_faces(data / "FERPlus" / "test", ["neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                                            "fear", "contempt"], 1, size=32, seed=3)
    _clips(
        data, work, "DFEW", {f"DFEW_set_{k}_test.txt": [(f"DFEW_Frame_Face/{k:05d}", k)] for k in range(1, 6)}, seed=4
    )
    _clips(data, work, "FERV39k", {"FERV39k_test.txt": [("2_ClipsforFaceCrop/Action/Happy/0015", 0),
                                                        ("2_ClipsforFaceCrop/Argue/Angry/0003", 3)]}, seed=5)
    _clips(
        data, work, "MAFW", {f"MAFW_set_{k}_test.txt": [(f"data/faces/{k:05d}", 2 * k)] for k in range(1, 6)}, seed=6
    )
    _clips(data, work, "AFEW", {"AFEW_validation.txt": [("AFEW_Face/validation/Sadness/1_1_002916200", 1),
                                                        ("AFEW_Face/validation/Fear/1_6_000502567", 6)]}, seed=7)
    return data


@pytest.fixture(scope="module")
def tiny_224(tmp_path_factory) -> list[str]:
    """CLI overrides for tiny random encoders that take the official transform's 224-pixel tensors; the CLIP is
    slimmer than the demo's (one layer, width 32): each of the 17 caches encodes the 198 protocol prompts."""
    models = tmp_path_factory.mktemp("models")
    slim = tiny_clip_cfg(224)
    slim["text_cfg"].update(layers=1, width=32, heads=1, context_length=32)
    slim["vision_cfg"].update(layers=1, width=32)
    return ["--clip-model", save_tiny_clip(models / "clip", image_size=224, model_cfg=slim),
            "--teacher", str(save_tiny_blip2(models / "blip2", image_size=224)),
            "--fit", "batch_size=8 epochs=2", "--device", "cpu", "--num-workers", "0", "--batch-size", "32"]


def test_missing_data_is_one_error_listing_every_source_before_any_encoding(tmp_path, data_root):
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    result = runner.invoke(app, ["run", "paper-vit-b-16", "--data-root", str(empty), "--out", str(out)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "17 of 17 sources are missing" in text and text.count("error:") == 1
    for label in SOURCES:
        assert f"{label}:" in text or f"{label}," in text, label
    assert "AffectNet7, AffectNet8: missing folder" in text and f"{empty / 'DFEW' / 'DFEW_set_3_test.txt'}" in text
    assert not (out / "caches").exists()

    partial = tmp_path / "partial"
    shutil.copytree(data_root, partial)
    (partial / "MAFW" / "MAFW_set_4_test.txt").unlink()
    shutil.rmtree(partial / "AFEW" / "AFEW_Face" / "validation" / "Fear")
    result = runner.invoke(app, ["run", "paper-vit-b-16", "--data-root", str(partial), "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "2 of 17 sources" in text
    assert f"MAFW fold 4: missing file {partial / 'MAFW' / 'MAFW_set_4_test.txt'}" in text
    assert "AFEW: 1 of 2 clip folders listed in" in text and "Fear/1_6_000502567" in text


def test_an_out_folder_whose_files_would_replace_the_data_is_refused_before_any_work(tmp_path, data_root, monkeypatch):
    def work(*args, **kwargs):
        raise AssertionError("encoding began before the output was checked")

    monkeypatch.setattr(preset_run, "extract", work)
    listing, out = data_root / "DFEW" / "DFEW_set_1_test.txt", tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "paper-vit-b-16.json").hardlink_to(listing)  # what the run would write is an input
    before = listing.read_bytes()
    result = runner.invoke(app, ["run", "paper-vit-b-16", "--data-root", str(data_root), "--out", str(out)])
    assert result.exit_code == 2 and listing.read_bytes() == before
    assert result.output.strip() == (f"error: --out {out}: would write {out / 'results' / 'paper-vit-b-16.json'}, the "
                                     f"same file as the input --data-root {listing}; give another folder")


def test_check_lists_where_every_dataset_is_expected(data_root):
    planned = preset_run.survey(presets.load("paper-vit-l-14"), data_root)
    assert [p.label for p in planned] == SOURCES and not [p.problem for p in planned if p.problem]
    assert [len(p.source.items) for p in planned][:5] == [21, 7, 8, 8, 8]
    result = runner.invoke(app, ["run", "paper-vit-l-14", "--data-root", str(data_root), "--check"])
    assert result.exit_code == 0, result.output
    assert "expected under" in result.output


def test_the_whole_run_on_synthetic_data_then_a_second_run_reuses_everything(tmp_path, data_root, tiny_224,
                                                                            monkeypatch):
    out = tmp_path / "out"
    command = ["run", "paper-vit-b-16", "--data-root", str(data_root), "--out", str(out), *tiny_224]
    built = []
    create = open_clip.create_model_and_transforms
    monkeypatch.setattr(open_clip, "create_model_and_transforms", lambda *a, **k: built.append(a[0]) or create(*a, **k))
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    assert len(built) == 1  # one CLIP for the 17 caches, loaded once
    result = json.loads((out / "results" / "paper-vit-b-16.json").read_text("utf-8"))
    assert [s["dataset"] + str(s["fold"] or "") for s in result["extract"]] == [
        "CAER-S", "RAFDB", "AffectNet7", "AffectNet8", "FERPlus", *(f"DFEW{k}" for k in range(1, 6)), "FERV39k",
        *(f"MAFW{k}" for k in range(1, 6)), "AFEW"]
    assert all(s["encoded"] == s["rows"] > 0 and not s["complete_before"] for s in result["extract"])
    assert all(Path(s["cache"]).is_file() for s in result["extract"])
    assert {s["dataset"]: s["left_out"] for s in result["extract"] if s["left_out"]} == {
        "AffectNet7": {"classes": ["Contempt"], "items": 1}}
    fitted = result["fit_head"]
    assert not fitted["reused"] and fitted["n_train"] == 21 and fitted["clip_key"] == "clip+official"
    assert (out / "heads" / "paper-vit-b-16.json").is_file()
    rows = {(r["dataset"], r["method"]): r for r in result["table2"]}
    assert set(rows) == {(d, m) for d in protocol.dataset_classes() for m in ("clip", "exp-clip")}
    assert rows[("DFEW", "exp-clip")]["folds"] == 5 and rows[("RAFDB", "clip")]["paper_uar"] == 38.66
    r = rows[("MAFW", "exp-clip")]
    assert r["delta_war"] == pytest.approx(r["war"] - 23.35)
    classes = {rec["dataset"]: len(rec["classes"]) for rec in result["records"]}
    assert classes == {"RAFDB": 7, "AffectNet7": 7, "AffectNet8": 8, "FERPlus": 8, "DFEW": 7, "FERV39k": 7,
                       "MAFW": 11, "AFEW": 7}
    assert len(result["records"]) == 2 * 5 * (6 + 5 + 5)  # methods x prompt sets x caches
    assert result["overrides"]["fit"] == {"batch_size": 8, "epochs": 2}
    assert "Table 2, paper-vit-b-16" in first.output and "not the paper's configuration" in first.output

    stamps = {p: p.stat().st_mtime_ns for p in [*(out / "caches").glob("*.h5"), *(out / "heads").iterdir()]}
    second = runner.invoke(app, command)
    assert second.exit_code == 0, second.output
    again = json.loads((out / "results" / "paper-vit-b-16.json").read_text("utf-8"))
    assert all(s["complete_before"] and s["encoded"] == 0 for s in again["extract"])
    assert again["fit_head"]["reused"] and "already complete, nothing to encode" in second.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["table2"] == result["table2"] and again["seconds"] < result["seconds"]

    keys = (fitted["clip_key"], fitted["teacher_key"], fitted["instruction_key"])
    train, head = Path(again["extract"][0]["cache"]), out / "heads" / "paper-vit-b-16"
    fit = dataclasses.replace(presets.load("paper-vit-b-16").fit, batch_size=8, epochs=2, device="cpu")
    assert preset_run._current_head(head, fit, train, keys) is not None
    refit = dataclasses.replace(fit, epochs=1)
    assert preset_run._current_head(head, refit, train, keys) is None  # another config: re-fit
    weights = head.with_name(head.name + ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert preset_run._current_head(head, fit, train, keys) is None  # damaged: fitted again, never reused
