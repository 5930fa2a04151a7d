"""Heads and search indexes against damage: a seeded fuzz like the cache's (tests/test_integrity.py).

Bytes of a head (HEAD.safetensors: its length prefix, header and weights; HEAD.json) and of a search index
(CACHE.h5.faiss/*.index and its provenance JSON) are flipped one copy at a time, and `evaluate`, `predict` and
`search` run on each copy in-process. A damaged head must give exactly the clean result or exit 2 with one error
line naming it; a damaged index is never an error: it is built again, saying so in one line, and the hits are
the clean ones.
"""

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expclip.cli import app
from expclip.demo.synthetic import write_faces
from expclip.stages.encoders.clip import identity, kept_loaded
from expclip.stages.shared.heads import build_head, save_head

runner = CliRunner()
REBUILT = "building the index again"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_clip) -> SimpleNamespace:
    """Faces extracted with the tiny CLIP, and a head that records that CLIP (as fit-head records a cache's)."""
    folder = tmp_path_factory.mktemp("fuzz")
    faces = folder / "faces"
    write_faces(faces, ["happy", "sad", "angry"], 1, size=40)
    cache = folder / "faces.h5"
    made = runner.invoke(app, ["extract", str(faces), "--out", str(cache), "--clip-model", tiny_clip, "--no-teacher",
                               "--num-workers", "0", "--device", "cpu"])
    assert made.exit_code == 0, made.output
    key, config = identity(tiny_clip, None, "model", "fp32")
    torch.manual_seed(0)
    head = folder / "head"
    save_head(build_head("linear", 32, 48), "linear", {"clip": config, "clip_key": key, "logit_scale": 20.0}, head)
    return SimpleNamespace(folder=folder, faces=faces, cache=cache, head=head, out=folder / "out.json")


def run(world: SimpleNamespace, command: str) -> tuple[int, str]:
    """(exit code, the command's JSON output when it succeeded, else everything it printed); a search's
    notices of an index built again are counted in `world.rebuilt`."""
    args = {
        "evaluate": ["evaluate", "--cache", str(world.cache), "--head", str(world.head), "--prompt-set", "class_name"],
        "predict": ["predict", str(world.faces), "--head", str(world.head), "--detector", "none",
                    "--classes", "happy,sad,angry"],
        "search": ["search", str(world.cache), "--text", "a happy face", "--head", str(world.head), "-k", "3"],
    }[command]
    world.out.unlink(missing_ok=True)
    result = runner.invoke(app, [*args, "--json", str(world.out), "--device", "cpu"])
    if result.exit_code != 0:
        return result.exit_code, result.output
    found = json.loads(world.out.read_text())
    if command == "search":
        world.rebuilt = result.stderr.count(REBUILT)
        found.pop("index_built")  # built now or reused: the same hits either way
    return 0, json.dumps(found)


def positions(rng: np.random.Generator, size: int, spans: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(offset, xor mask) pairs: `count` distinct offsets drawn in each [start, end) span."""
    picks = [int(o) for start, end, count in spans
             for o in rng.choice(np.arange(start, min(end, size)), count, replace=False)]
    return [(o, int(rng.integers(1, 256))) for o in picks]


def flipped(path: Path, clean: bytes, offset: int, mask: int) -> None:
    data = bytearray(clean)
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def assert_clean_or_one_line(where: str, got: tuple[int, str], clean: str, names: str) -> bool:
    """True when the run gave one error line (naming `names`), False when it gave exactly the clean result."""
    code, text = got
    if code == 0:
        assert text == clean, f"{where}: exit 0 with another result"
        return False
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"{where}: {text}"
    assert names in lines[0] and "Traceback" not in text, f"{where}: {lines[0]}"
    return True


def test_fuzz_damaged_heads_and_indexes_give_the_clean_result_or_one_error_line(world):
    started = time.monotonic()
    rng = np.random.default_rng(17)
    weights, card = world.head.with_suffix(".safetensors"), world.head.with_suffix(".json")
    clean_weights, clean_card = weights.read_bytes(), card.read_bytes()
    header = 8 + int.from_bytes(clean_weights[:8], "little")
    errors = 0
    with kept_loaded():  # the tiny CLIP loaded once for every run: what is under test is the head and the index
        clean = {c: run(world, c) for c in ("evaluate", "predict", "search")}
        assert all(code == 0 for code, _ in clean.values()), clean
        for path, original, spans in (
            (weights, clean_weights, [(0, 8, 1), (8, header, 7), (header, len(clean_weights), 6)]),
            (card, clean_card, [(0, len(clean_card), 10)]),
        ):
            for offset, mask in positions(rng, len(original), spans):
                flipped(path, original, offset, mask)
                for command in clean:
                    where = f"{path.name} byte {offset} ^ {mask:#x}: {command}"
                    errors += assert_clean_or_one_line(where, run(world, command), clean[command][1], "head.")
            path.write_bytes(original)

        index = next((world.cache.parent / (world.cache.name + ".faiss")).glob("*.index"))
        provenance = index.with_suffix(".json")
        for path in (index, provenance):
            original = path.read_bytes()
            for offset, mask in positions(rng, len(original), [(0, len(original), 5 if path == index else 3)]):
                flipped(path, original, offset, mask)
                code, found = run(world, "search")
                where = f"{path.name} byte {offset} ^ {mask:#x}"
                assert (code, found) == clean["search"], f"{where}: {found}"
                # the index's every byte is checked; the JSON's whitespace may take another whitespace harmlessly
                assert world.rebuilt == 1 if path == index else world.rebuilt <= 1, where
        code, found = run(world, "search")  # built again intact: reused, silently
        assert (code, found) == clean["search"] and world.rebuilt == 0
    assert errors >= 3 * 20  # every flip in the weights, and nearly every one in the card, is refused
    print(f"fuzz: {errors} one-line errors, {time.monotonic() - started:.1f} s")
