"""The one cross-check of what the package ships against ../shared/reference (skipped where it is absent).

Every other test uses the package's own copy (the protocol JSON, the defaults,
tests/data/annotation_samples), so a fresh clone without ../shared tests everything else.
"""

import json
import re
from pathlib import Path

import pytest

from expclip.stages.fit_head import FitConfig
from expclip.stages.shared import protocol

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
SAMPLES = Path(__file__).resolve().parent / "data" / "annotation_samples"


def _reference(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return path


def test_packaged_protocol_equals_reference():
    assert protocol.protocol() == json.loads(_reference("exp_clip_protocol.json").read_text())


def test_default_instruction_and_video_protocol_are_the_official_ones():
    paper = json.loads(_reference("exp_clip_paper_results.json").read_text())
    assert protocol.DEFAULT_INSTRUCTION == paper["official_training"]["instruction"]
    assert "int(t/2 + t*i)" in paper["video_protocol"] and protocol.DEFAULT_FRAMES == 16


def test_fit_defaults_are_the_official_run():
    official = json.loads(_reference("exp_clip_paper_results.json").read_text())["official_training"]
    opt = official["optimizer"]
    number = r"([0-9.]+(?:e-?[0-9]+)?)"
    c = FitConfig()
    assert c.lr == float(re.search(r"lr " + number, opt).group(1))
    assert c.momentum == float(re.search(r"momentum " + number, opt).group(1))
    assert c.weight_decay == float(re.search(r"weight_decay " + number, opt).group(1))
    assert c.milestones == (int(re.search(r"milestone (\d+)", opt).group(1)),)
    assert c.gamma == float(re.search(r"gamma " + number, opt).group(1))
    assert c.optimizer == "sgd" and opt.startswith("SGD")
    assert (c.batch_size, c.epochs) == (official["batch_size"], official["epochs"])
    assert "drop_last" in official["data"] and c.head == "linear" and c.logit_scale is None


def test_test_annotation_samples_are_the_reference_ones():
    reference = _reference("annotation_samples")
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in SAMPLES.iterdir())
    for name in names:
        assert (SAMPLES / name).read_bytes() == (reference / name).read_bytes(), name
