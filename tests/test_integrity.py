"""Cache integrity: checksums written by the merge, checked on open and on read, `expclip cache verify`, a fuzz test.

The fuzz tests flip bytes of a small cache (seeded; in HDF5's metadata and in
feature data): `cache verify` runs in-process on every damaged copy and must
report it clean, damaged or unreadable in one line; `cache info`, `fit-head`
and `evaluate` each run on one damaged copy in a (forked) child process, so that a
crash inside HDF5 fails the test (naming the byte) instead of killing pytest.
"""

import faulthandler
import json
import subprocess
from pathlib import Path

import forked
import h5py
import numpy as np
import pytest
from conftest import KEY, clip_attrs
from typer.testing import CliRunner

from expclip.cache import format as fmt
from expclip.cache import h5files
from expclip.cache.checksums import METADATA, STRINGS, DamagedCache, values_digest
from expclip.cache.reader import CacheReader, open_cache
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.stages.shared import protocol

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
    clip = clip_attrs(precision="float32", logit_scale=50.0, embed_dim=d, versions=versions)
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
        f.visititems(
            lambda name, obj: (
                numeric.append(obj) if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" else None
            )
        )
        assert {ds.name for ds in numeric} == {
            "/items/label",
            "/items/ok",
            f"/image/{KEY}",
            "/teacher/tiny/paper",
            f"/{TEXT}",
        }
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
    clean = CliRunner().invoke(
        app, ["fit-head", str(cache), "--out", str(tmp_path / "h"), "--epochs", "1", "--batch-size", "8"]
    )
    assert clean.exit_code == 0, clean.output
    flip(cache, image_chunk[0] + 3)
    for args in (["fit-head", str(cache), "--out", str(tmp_path / "h2"), "--epochs", "1", "--batch-size", "8"],
                 ["evaluate", "--cache", str(cache), "--head", str(tmp_path / "h"), "--baseline"]):
        one_error_line(
            CliRunner().invoke(app, args), str(cache), f"/image/{KEY} is damaged", "Fletcher-32", "expclip extract"
        )
    flip(cache, image_chunk[0] + 3)  # repaired
    flip(cache, teacher_chunk[0] + teacher_chunk[1] - 1)
    result = CliRunner().invoke(
        app, ["fit-head", str(cache), "--out", str(tmp_path / "h3"), "--epochs", "1", "--batch-size", "8"]
    )
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
        write_arrays(
            cache,
            items,
            file_attrs={},
            aligned={"image/other": (np.zeros((len(items), 2), np.float32), {"model": "o"})},
        )


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


def fuzz_worker(work: Path, cases: dict) -> None:
    """Run in a forked child: a clean head, then each command on its damaged copy; results to results.json."""
    import warnings

    warnings.simplefilter("ignore")
    clean, cache, runner = (work / "clean.h5").read_bytes(), work / "cache.h5", CliRunner()
    commands = {
        "info": ["cache", "info", str(cache)],
        "fit-head": ["fit-head", str(cache), "--out", str(work / "head"), "--epochs", "1", "--batch-size", "8"],
        "evaluate": ["evaluate", "--cache", str(cache), "--head", str(work / "clean-head"), "--baseline"],
    }
    cache.write_bytes(clean)
    head = ["fit-head", str(cache), "--out", str(work / "clean-head"), "--epochs", "1", "--batch-size", "8"]
    fit = runner.invoke(app, head)
    assert fit.exit_code == 0, fit.output
    found = {}
    for command, (offset, mask) in cases.items():
        data = bytearray(clean)
        data[offset] ^= mask
        cache.write_bytes(bytes(data))
        (work / "current").write_text(f"{command} {offset}")
        r = runner.invoke(app, commands[command])
        found[command] = [r.exit_code, r.output]
    (work / "results.json").write_text(json.dumps(found))


def fuzz_positions(path: Path, seed: int = 7, metadata: int = 40, data: int = 16) -> list[tuple[int, int]]:
    """(offset, xor mask) pairs: some in HDF5 metadata (everything outside chunk data), some in chunks."""
    with h5py.File(path, "r") as f:
        ranges = []
        f.visititems(
            lambda name, obj: (
                ranges.extend(chunks(path, name)) if isinstance(obj, h5py.Dataset) and obj.chunks else None
            )
        )
    in_data = np.zeros(path.stat().st_size, dtype=bool)
    for offset, size in ranges:
        in_data[offset:offset + size] = True
    rng = np.random.default_rng(seed)
    picks = list(rng.choice(np.flatnonzero(~in_data), metadata, replace=False))
    picks += list(rng.choice(np.flatnonzero(in_data), data, replace=False))
    return [(int(o), int(rng.integers(1, 256))) for o in picks]


def test_fuzz_verify_names_every_damaged_copy_or_finds_it_clean(cache, tmp_path):
    """`cache verify` in-process over every damaged copy: OK with the clean report (the byte was unused), or
    `damaged:` lines naming the file (exit 1), or one error line (exit 2). Every flip in chunk data is found.
    faulthandler turns a hang inside HDF5 into a failure with a traceback instead of a stalled suite."""
    positions, clean = fuzz_positions(cache), cache.read_bytes()
    copy, runner = tmp_path / "cache.h5", CliRunner()
    copy.write_bytes(clean)
    ok = runner.invoke(app, ["cache", "verify", str(copy)])
    assert ok.exit_code == 0 and f"{copy}: OK, 3 feature groups" in ok.output, ok.output
    codes = []
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        for offset, mask in positions:
            data = bytearray(clean)
            data[offset] ^= mask
            copy.write_bytes(bytes(data))
            result = runner.invoke(app, ["cache", "verify", str(copy)])
            where = f"byte {offset} ^ {mask:#x}: {result.output}"
            if result.exit_code == 0:
                assert result.output.split(" MB in ")[0] == ok.output.split(" MB in ")[0], where  # less the time
            elif result.exit_code == 1:
                damaged = [line for line in result.output.splitlines() if line.startswith("damaged:")]
                assert damaged and all(line.startswith(f"damaged: {copy}: ") for line in damaged), where
            else:
                one_error_line(result, "cache.h5")
            codes.append(result.exit_code)
    finally:
        faulthandler.cancel_dump_traceback_later()
    in_data = codes[-16:]  # fuzz_positions puts the 16 flips in chunk data last
    assert all(code != 0 for code in in_data), in_data
    assert sum(code != 0 for code in codes[:-16]) >= 10, codes  # most metadata flips are found too


def test_fuzz_each_command_gives_one_error_line_in_a_child_process(cache, tmp_path):
    """One damaged copy per command in a child process, so that a crash inside HDF5 fails the test (naming the
    byte) instead of killing pytest: info on a metadata flip, fit-head and evaluate on a feature-data flip."""
    positions = fuzz_positions(cache)
    metadata = next(p for p in positions[:-16] if verify_code(cache, *p) != 0)
    image_chunk = chunks(cache, fmt.image_path(KEY))[0][0]
    cases = {"info": metadata, "fit-head": (image_chunk + 3, 0x21), "evaluate": (image_chunk + 3, 0x21)}
    work = tmp_path / "fuzz"
    work.mkdir()
    (work / "clean.h5").write_bytes(cache.read_bytes())
    try:
        proc = forked.run(fuzz_worker, work, cases)
    except subprocess.TimeoutExpired:
        pytest.fail(f"HDF5 hung at {(work / 'current').read_text().strip()}")
    at = (work / "current").read_text().strip() if (work / "current").exists() else "start"
    assert proc.returncode == 0, f"worker died (rc {proc.returncode}) at {at}: {proc.stderr[-2000:]}"
    found = json.loads((work / "results.json").read_text())
    assert sorted(found) == ["evaluate", "fit-head", "info"]
    for command, (code, output) in found.items():
        lines = [line for line in output.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (command, cases[command], output)
        assert "cache.h5" in lines[0] and "Traceback" not in output


def verify_code(cache: Path, offset: int, mask: int) -> int:
    """Exit code of `cache verify` on a copy of `cache` with one byte flipped."""
    copy = cache.with_name("verify-copy.h5")
    data = bytearray(cache.read_bytes())
    data[offset] ^= mask
    copy.write_bytes(bytes(data))
    return CliRunner().invoke(app, ["cache", "verify", str(copy)]).exit_code
