"""The packaged protocol equals the reference data in ../shared/reference (users have no ../shared)."""

import json
from pathlib import Path

import pytest

from expclip.stages.shared import protocol

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="module")
def reference() -> dict:
    path = REFERENCE / "exp_clip_protocol.json"
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def paper() -> dict:
    path = REFERENCE / "exp_clip_paper_results.json"
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return json.loads(path.read_text())


def test_packaged_protocol_equals_reference(reference):
    assert protocol.protocol() == reference
    assert protocol.class_order() == reference["class_order"]
    assert protocol.dataset_classes() == reference["dataset_classes"]
    assert set(protocol.prompt_sets()) == {"class_name", "an_expression_of", "a_photo_of_a_face", "ensemble_five", "ensemble_ten"}


def test_default_instruction_is_the_official_one(paper):
    assert protocol.DEFAULT_INSTRUCTION == paper["official_training"]["instruction"]


@pytest.mark.parametrize(
    "name, canonical",
    [("happy", "Happiness"), ("Happiness", "Happiness"), ("SAD", "Sadness"), ("angry", "Anger"),
     ("Anger", "Anger"), ("surprised", "Surprise"), ("disgusted", "Disgust"), ("fearful", "Fear"),
     ("fear", "Fear"), ("neutral", "Neutral"), ("contempt", "Contempt"), ("anxiety", "Anxiety"),
     ("helplessness", "Helplessness"), ("disappointment", "Disappointment"), ("bored", None)],
)
def test_canonical_class_synonyms(name, canonical):
    assert protocol.canonical_class(name) == canonical


def test_frame_indices_follow_video_protocol(paper):
    # video_protocol: "if num_frames > 16, frame int(t/2 + t*i) with t = num_frames/16 ...; else frame 0 sixteen times"
    assert "int(t/2 + t*i)" in paper["video_protocol"]
    assert protocol.frame_indices(144) == [int(4.5 + 9 * i) for i in range(16)]
    assert protocol.frame_indices(144)[:3] == [4, 13, 22]
    assert protocol.frame_indices(25) == [int(25 / 32 + 25 / 16 * i) for i in range(16)]
    assert protocol.frame_indices(17)[-1] == 16  # last segment's middle stays inside the clip
    assert protocol.frame_indices(16) == [0] * 16
    assert protocol.frame_indices(5) == [0] * 16
    assert protocol.frame_indices(40, frames=4) == [5, 15, 25, 35]
    with pytest.raises(ValueError):
        protocol.frame_indices(0)
