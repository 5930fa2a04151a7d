"""The packaged protocol (users have no ../shared; tests/test_reference.py cross-checks it against the reference)."""

import pytest

from expclip.stages.shared import protocol


def test_packaged_protocol_has_the_classes_and_prompt_sets():
    order = protocol.class_order()
    assert len(order) == 11 and order[:7] == ["Happiness", "Sadness", "Neutral", "Anger", "Surprise", "Disgust", "Fear"]
    assert all(n <= len(order) for n in protocol.dataset_classes().values())
    sets = protocol.prompt_sets()
    assert list(sets) == ["class_name", "an_expression_of", "a_photo_of_a_face", "ensemble_five", "ensemble_ten"]
    for name, prompts in sets.items():
        assert list(prompts) == order, name  # every set covers every class, in canonical order
        assert all(p and all(isinstance(t, str) and t for t in p) for p in prompts.values())


@pytest.mark.parametrize(
    "name, canonical",
    [("happy", "Happiness"), ("Happiness", "Happiness"), ("SAD", "Sadness"), ("angry", "Anger"),
     ("Anger", "Anger"), ("surprised", "Surprise"), ("disgusted", "Disgust"), ("fearful", "Fear"),
     ("fear", "Fear"), ("neutral", "Neutral"), ("contempt", "Contempt"), ("anxiety", "Anxiety"),
     ("helplessness", "Helplessness"), ("disappointment", "Disappointment"), ("bored", None)],
)
def test_canonical_class_synonyms(name, canonical):
    assert protocol.canonical_class(name) == canonical


def test_frame_indices_follow_video_protocol():
    # video_protocol: "if num_frames > 16, frame int(t/2 + t*i) with t = num_frames/16 ...; else frame 0 sixteen times"
    assert protocol.frame_indices(144) == [int(4.5 + 9 * i) for i in range(16)]
    assert protocol.frame_indices(144)[:3] == [4, 13, 22]
    assert protocol.frame_indices(25) == [int(25 / 32 + 25 / 16 * i) for i in range(16)]
    assert protocol.frame_indices(17)[-1] == 16  # last segment's middle stays inside the clip
    assert protocol.frame_indices(16) == [0] * 16
    assert protocol.frame_indices(5) == [0] * 16
    assert protocol.frame_indices(40, frames=4) == [5, 15, 25, 35]
    with pytest.raises(ValueError):
        protocol.frame_indices(0)
