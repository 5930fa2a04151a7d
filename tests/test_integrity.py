"""Cache integrity: checksums written by the merge, checked on open and on read, `expclip cache verify`, and a fuzz test.

The fuzz test flips bytes of a small cache (seeded; in HDF5's metadata and in
feature data) and runs `cache info`, `fit-head` and `evaluate` on each damaged
copy: each must give exactly the clean result or exit 2 with one error line.
The copies run in one child process, so that a crash or a hang inside HDF5
fails the test (naming the byte) instead of killing or stalling pytest.
"""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from expclip.cache import format as fmt
from expclip.cache import h5files
from expclip.cache.checksums import STRINGS, METADATA, DamagedCache, values_digest
from expclip.cache.reader import CacheReader, open_cache
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.stages.shared import protocol

KEY = "ViT-T@test"
TEACHER = ("tiny", "paper")
TEXT = fmt.text_path(KEY, "class_name")


def build(path: Path, n: int = 24, d: int = 8, dt: int = 12) -> Path:
    """A small cache like extract writes: image, teacher and text groups with their usual attributes, one failure."""
    rng = np.random.default_rng(0)
    items = fmt.Items(ids=[f"img{i:02d}.png" for i in range(n)], labels=np.arange(n) % 3,
                      class_names=["Happiness", "Sadness", "Anger"])
    order, per = protocol.class_order(), protocol.prompt_sets()["class_name"]
    prompts = [p for c in order if c in per for p in per[c]]
    index = [order.index(c) for c in order if c in per for _ in per[c]]
    image = rng.standard_normal((n, d)).astype(np.float32)
    image[5] = np.nan
    versions = '{"torch": "2.10", "open_clip": "3.0", "expclip": "0.1.0"}'
    clip = {"model": "ViT-T", "pretrained": "test", "pretrained_sha256": "", "transform": "model", "precision": "float32",
            "logit_scale": 50.0, "embed_dim": d, "versions": versions}
    teacher = {"model": "tiny", "instruction": "Describe the face.", "family": "blip2-t5", "pooling": "mean",
               "transform": "model", "precision": "float32", "weights_sha256": "", "versions": versions}
    text = {"prompts": prompts, "class_names": order, "class_index": index, "model": "ViT-T", "pretrained": "test",
            "pretrained_sha256": "", "precision": "float32", "prompts_sha256": "ab" * 32}
    write_arrays(path, items, file_attrs={"dataset": "toy", "source": "synthetic"}, failures={5: "not an image"},
                 aligned={fmt.image_path(KEY): (image, clip),
                          fmt.teacher_path(*TEACHER): (rng.standard_normal((n, dt)).astype(np.float32), teacher)},
                 small={TEXT: (rng.standard_normal((len(prompts), d)).astype(np.float32), text)})
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(h5files, "CHUNK_BYTES", 128)  # several chunks per dataset: chunk indexes are exercised
    return build(tmp_path / "c.h5")


def chunks(path: Path, name: str) -> list[tuple[int, int]]:
    """(file offset, size) of each stored chunk of a dataset."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        return [(c.byte_offset, c.size) for c in map(ds.id.get_chunk_info, range(ds.id.get_num_chunks()))]


def flip(path: Path, offset: int, mask: int = 0x10) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
    return path


def one_error_line(result, *texts: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output and all(t in lines[0] for t in texts), lines[0]
    return lines[0]


def test_new_caches_carry_checksums_and_keep_their_chunk_shapes(tmp_path):
    path = build(tmp_path / "c.h5", n=3000, d=64)
    with h5py.File(path, "r") as f:
        numeric = []
        f.visititems(lambda name, obj: numeric.append(obj) if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" else None)
        assert {ds.name for ds in numeric} == {"/items/label", "/items/ok", f"/image/{KEY}", "/teacher/tiny/paper", f"/{TEXT}"}
        assert all(ds.fletcher32 and ds.chunks for ds in numeric)
        assert f[fmt.image_path(KEY)].chunks == (3000, 64)  # ~1 MiB of float16 rows, as before (all 3000 fit)
        assert f["teacher/tiny/paper"].chunks == (3000, 12)
        for group in ("items", "failures"):
            assert f[group].attrs["sha256"] == values_digest(f[group])
        assert len(f.attrs[METADATA]) == 64 and f.attrs[STRINGS].shape[1] == 2
        assert f.id.get_create_plist().get_version()[0] >= 2  # superblock with a checksum
    assert (tmp_path / "c.h5").exists()


def test_a_flipped_byte_in_image_or_teacher_data_names_the_group(cache, tmp_path):
    image_chunk = chunks(cache, fmt.image_path(KEY))[1]
    teacher_chunk = chunks(cache, fmt.teacher_path(*TEACHER))[0]
    clean = CliRunner().invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "h"), "--epochs", "1", "--batch-size", "8"])
    assert clean.exit_code == 0, clean.output
    flip(cache, image_chunk[0] + 3)
    for args in (["fit-head", str(cache), "--out", str(tmp_path / "h2"), "--epochs", "1", "--batch-size", "8"],
                 ["evaluate", "--cache", str(cache), "--head", str(tmp_path / "h"), "--baseline"]):
        one_error_line(CliRunner().invoke(app, args), str(cache), f"/image/{KEY} is damaged", "Fletcher-32", "expclip extract")
    flip(cache, image_chunk[0] + 3)  # repaired
    flip(cache, teacher_chunk[0] + teacher_chunk[1] - 1)
    result = CliRunner().invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "h3"), "--epochs", "1", "--batch-size", "8"])
    one_error_line(result, "/teacher/tiny/paper is damaged")


def test_damaged_text_or_items_are_refused_on_open(cache):
    flip(cache, chunks(cache, TEXT)[0][0])
    with pytest.raises(DamagedCache, match=f"/{TEXT} is damaged .*Fletcher-32"):
        CacheReader(cache)
    flip(cache, chunks(cache, TEXT)[0][0])
    flip(cache, chunks(cache, "items/label")[1][0] + 2)
    with pytest.raises(DamagedCache, match=r"/items is damaged .*Fletcher-32"):
        CacheReader(cache)
    flip(cache, chunks(cache, "items/label")[1][0] + 2)
    CacheReader(cache).close()
    with h5py.File(cache, "r+") as f:  # an edit that HDF5's own checksums accept: the sha256 attributes do not
        f[TEXT][0, 0] += 1
    with pytest.raises(DamagedCache, match=f"/{TEXT} is damaged \\(its bytes do not match its sha256"):
        CacheReader(cache)


def test_damaged_strings_are_refused_before_hdf5_parses_them(cache):
    """Item ids live in HDF5's global heap (no checksum; damage there can make HDF5 loop forever)."""
    at = cache.read_bytes().index(b"img07.png")
    flip(cache, at + 4)
    with pytest.raises(DamagedCache, match=r"string storage \(HDF5 global heap\) is damaged"):
        open_cache(cache)
    result = CliRunner().invoke(app, ["cache", "info", str(cache)])
    one_error_line(result, "HDF5 global heap")


def test_extending_a_damaged_cache_is_refused(cache):
    items = CacheReader(cache).items()
    flip(cache, chunks(cache, "items/ok")[0][0])
    with pytest.raises(DamagedCache, match="/items is damaged"):
        write_arrays(cache, items, file_attrs={}, aligned={"image/other": (np.zeros((len(items), 2), np.float32), {"model": "o"})})


def test_cache_verify_reports_each_damaged_group(cache, tmp_path):
    result = CliRunner().invoke(app, ["cache", "verify", str(cache)])
    assert result.exit_code == 0 and f"{cache}: OK, 3 feature groups" in result.output, result.output
    flip(cache, chunks(cache, fmt.image_path(KEY))[2][0])
    flip(cache, chunks(cache, TEXT)[0][0] + 1)
    clean = build(tmp_path / "clean.h5")
    result = CliRunner().invoke(app, ["cache", "verify", str(cache), str(clean)])
    assert result.exit_code == 1, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("damaged:")]
    assert problems == [
        f"damaged: {cache}: /image/{KEY}: 1 chunk(s) fail their Fletcher-32 checksum (rows 16–23)",
        f"damaged: {cache}: /{TEXT}: 1 chunk(s) fail their Fletcher-32 checksum (rows 0–3)",
    ]
    assert f"{clean}: OK, 3 feature groups" in result.output
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    result = CliRunner().invoke(app, ["cache", "verify", str(tmp_path / "junk.h5")])
    one_error_line(result, "junk.h5: not a readable HDF5 file")


@pytest.mark.parametrize("name, part, problem", [
    (STRINGS, "the file's string storage (HDF5 global heap) is damaged (it has no string_bytes attribute)",
     "the file's string storage (HDF5 global heap): it has no string_bytes attribute"),
    (METADATA, "the file's metadata (structure or attributes) is damaged (it has no metadata_sha256 attribute)",
     "structure or attributes: no metadata_sha256 attribute"),
])
def test_a_cache_of_this_version_without_a_checksum_is_damaged(cache, name, part, problem):
    """Every cache of this format version carries its checksums: one that lacks one is not read unchecked."""
    with h5py.File(cache, "r+") as f:
        del f.attrs[name]
    one_error_line(CliRunner().invoke(app, ["cache", "info", str(cache)]), f"{cache}: {part}; delete {cache}")
    result = CliRunner().invoke(app, ["cache", "verify", str(cache)])
    assert result.exit_code == 1 and f"damaged: {cache}: {problem}\n" in result.output, result.output


def test_cache_info_says_which_checksums_a_cache_carries(cache):
    result = CliRunner().invoke(app, ["cache", "info", str(cache)])
    assert result.exit_code == 0 and "Fletcher-32 per chunk, checked on every read" in result.output
    assert "string_bytes" not in result.output and "metadata_sha256" not in result.output


FUZZ_WORKER = textwrap.dedent(
    """
    import hashlib, json, shutil, sys, warnings
    from pathlib import Path
    from safetensors.numpy import load_file
    from typer.testing import CliRunner
    from expclip.cli import app

    warnings.simplefilter("ignore")
    work, positions = Path(sys.argv[1]), json.loads(sys.argv[2])
    clean, cache, runner = (work / "clean.h5").read_bytes(), work / "cache.h5", CliRunner()

    def fit(out):
        return runner.invoke(app, ["fit-head", str(cache), "--out", str(out), "--epochs", "1", "--batch-size", "8"])

    def weights(path):  # the tensors (the file's metadata is a dict in no fixed order)
        tensors = load_file(path)
        return hashlib.sha256(b"".join(tensors[k].tobytes() for k in sorted(tensors))).hexdigest()

    def outcome(result, ok):
        return [result.exit_code, ok() if result.exit_code == 0 else result.output]

    def run_all():
        found = {}
        r = runner.invoke(app, ["cache", "info", str(cache)])
        found["info"] = outcome(r, lambda: r.output)
        r = fit(work / "head")
        found["fit-head"] = outcome(r, lambda: weights(work / "head.safetensors"))
        (work / "r.json").unlink(missing_ok=True)
        r = runner.invoke(app, ["evaluate", "--cache", str(cache), "--head", str(work / "clean-head"), "--baseline",
                                "--json", str(work / "r.json")])
        found["evaluate"] = outcome(r, lambda: (work / "r.json").read_text())
        return found

    cache.write_bytes(clean)
    assert fit(work / "clean-head").exit_code == 0
    with open(work / "results.jsonl", "w") as log:
        for offset, mask in [(None, 0)] + positions:
            data = bytearray(clean)
            if offset is not None:
                data[offset] ^= mask
            cache.write_bytes(bytes(data))
            print(offset, file=open(work / "current", "w"), flush=True)
            log.write(json.dumps([offset, mask, run_all()]) + "\\n")
            log.flush()
    """
)


def fuzz_positions(path: Path, seed: int = 7, metadata: int = 40, data: int = 16) -> list[tuple[int, int]]:
    """(offset, xor mask) pairs: some in HDF5 metadata (everything outside chunk data), some in chunks."""
    with h5py.File(path, "r") as f:
        ranges = []
        f.visititems(lambda name, obj: ranges.extend(chunks(path, name)) if isinstance(obj, h5py.Dataset) and obj.chunks else None)
    in_data = np.zeros(path.stat().st_size, dtype=bool)
    for offset, size in ranges:
        in_data[offset:offset + size] = True
    rng = np.random.default_rng(seed)
    picks = list(rng.choice(np.flatnonzero(~in_data), metadata, replace=False))
    picks += list(rng.choice(np.flatnonzero(in_data), data, replace=False))
    return [(int(o), int(rng.integers(1, 256))) for o in picks]


def test_fuzz_damaged_copies_give_the_clean_result_or_one_error_line(cache, tmp_path):
    work = tmp_path / "fuzz"
    work.mkdir()
    (work / "clean.h5").write_bytes(cache.read_bytes())
    positions = fuzz_positions(cache)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", FUZZ_WORKER, str(work), json.dumps(positions)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"worker died (rc {proc.returncode}) at byte {(work / 'current').read_text().strip()}: {proc.stderr[-2000:]}"
    except subprocess.TimeoutExpired:
        pytest.fail(f"HDF5 hung at byte {(work / 'current').read_text().strip()}")
    runs = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert len(runs) == len(positions) + 1
    _, _, clean = runs[0]
    assert all(code == 0 for code, _ in clean.values()), clean
    errors = 0
    for offset, mask, found in runs[1:]:
        for command, (code, got) in found.items():
            if code == 0:
                assert got == clean[command][1], f"byte {offset} ^ {mask:#x}: {command} exits 0 with another result"
            else:
                lines = [line for line in got.splitlines() if line.strip()]
                assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"byte {offset} ^ {mask:#x}: {command}: {got}"
                assert "cache.h5" in lines[0]
                errors += 1
    assert errors >= len(positions)  # most damage is met by some command (the rest fell on unused bytes)
    print(f"fuzz: {len(positions)} damaged copies x 3 commands, {errors} one-line errors, {time.monotonic() - started:.1f} s")
