"""`load_image` decodes files as people see them: depth, orientation, transparency and size, on real files."""

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from expclip.cache.reader import CacheReader
from expclip.demo.synthetic import write_faces
from expclip.stages.encoders import images
from expclip.stages.encoders.images import DecodeError, load_image
from expclip.stages.extract import ExtractConfig, extract, sources

RNG = np.random.default_rng(7)
RGB8 = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
RGB8[0, 0], RGB8[0, 1] = 0, 255  # both ends of the range
GRAY8 = RGB8[..., 1].copy()


@pytest.fixture(autouse=True)
def no_warnings():
    """Every decode here runs with warnings as errors: none may reach the console."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def decoded(path: Path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def opened_mode(path: Path) -> str:
    """The mode Pillow itself gives the file: what the loader's rules are written against."""
    with Image.open(path) as im:
        return im.mode


def write_png(path: Path, samples: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour): 0 gray, 2 RGB, 4 LA, 6 RGBA."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


def write_tiff(path: Path, samples: np.ndarray, sample_format: int) -> Path:
    """A one-strip grayscale little-endian TIFF with any sample type (1 unsigned, 2 signed, 3 float)."""
    data = np.ascontiguousarray(samples, dtype=samples.dtype.newbyteorder("<")).tobytes()
    height, width = samples.shape
    tags = [(256, 4, width), (257, 4, height), (258, 3, samples.dtype.itemsize * 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, len(data)), (339, 3, sample_format)]
    entries = b"".join(
        struct.pack("<HHI", tag, kind, 1)
        + struct.pack("<I" if kind == 4 else "<HH", value, *([0] if kind == 3 else []))
        for tag, kind, value in tags
    )
    path.write_bytes(
        b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + struct.pack("<H", len(tags)) + entries + b"\0" * 4
    )
    return path


# --- bit depth -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, write, mode",
    [
        ("gray16-pil.png", lambda p: Image.fromarray(GRAY8.astype(np.uint16) * 257).save(p), "I;16"),
        ("gray16.png", lambda p: write_png(p, GRAY8.astype(np.uint16) * 257, 0), "I;16"),
        (
            "gray16-big-endian.tif",
            lambda p: Image.fromarray((GRAY8.astype(np.uint16) * 257).astype(">u2")).save(p),
            "I;16B",
        ),
        (
            "gray16.pgm",
            lambda p: p.write_bytes(b"P5 7 9 65535\n" + (GRAY8.astype(">u2") * np.uint16(257)).tobytes()),
            "I",
        ),
        ("gray-signed16.tif", lambda p: write_tiff(p, GRAY8.astype(np.int16) * 128, 2), "I"),
        ("gray-unsigned32.tif", lambda p: write_tiff(p, GRAY8.astype(np.uint32) * 0x01010101, 1), "I"),
        ("gray-signed32.tif", lambda p: Image.fromarray(GRAY8.astype(np.int32) * 0x00808080).save(p), "I"),
    ],
)
def test_deep_grayscale_copies_of_an_8_bit_image_give_its_pixels(tmp_path, name, write, mode):
    path = tmp_path / name
    write(path)
    assert opened_mode(path) == mode
    np.testing.assert_array_equal(decoded(path), np.repeat(GRAY8[..., None], 3, axis=2))


@pytest.mark.parametrize("color_type, alpha", [(2, None), (6, 255)])
def test_16_bit_colour_png_copies_give_the_8_bit_pixels(tmp_path, color_type, alpha):
    samples = RGB8 if alpha is None else np.concatenate([RGB8, np.full((*RGB8.shape[:2], 1), alpha, np.uint8)], axis=2)
    path = write_png(tmp_path / "colour16.png", samples.astype(np.uint16) * 257, color_type)
    assert opened_mode(path) == ("RGB" if alpha is None else "RGBA")  # Pillow keeps the high byte itself
    np.testing.assert_array_equal(decoded(path), RGB8)


def test_deep_integers_keep_their_high_byte_and_negatives_are_black(tmp_path):
    values = np.array([[0, 255, 256, 511, 65535], [32768, 40000, 1, 257, 65280]], dtype=np.uint16)
    np.testing.assert_array_equal(decoded(write_png(tmp_path / "g.png", values, 0))[..., 0], values >> 8)
    signed = np.array([[-1, -30000, 0, 127, 128, 32767]], dtype=np.int16)
    np.testing.assert_array_equal(decoded(write_tiff(tmp_path / "s.tif", signed, 2))[0, :, 0], [0, 0, 0, 0, 1, 255])


def test_float_tiff_is_read_as_0_to_1_with_values_outside_clipped(tmp_path):
    path = tmp_path / "unit.tif"
    Image.fromarray(GRAY8.astype(np.float32) / 255).save(path)
    assert opened_mode(path) == "F"
    np.testing.assert_array_equal(decoded(path)[..., 0], GRAY8)
    odd = np.array([[-0.5, 1.5, np.nan, np.inf, 0.25, 0.1]], dtype=np.float32)
    np.testing.assert_array_equal(decoded(write_tiff(tmp_path / "odd.tif", odd, 3))[0, :, 0], [0, 255, 0, 255, 64, 26])


def test_float_tiffs_pillow_cannot_read_are_recorded(tmp_path):
    path = write_tiff(tmp_path / "float64.tif", np.zeros((4, 4), np.float64), 3)  # no Pillow mode for it
    with pytest.raises(DecodeError, match="not an image"):
        load_image(path)


# --- orientation ---------------------------------------------------------------------------------------------

# The EXIF specification's eight orientations as numpy operations: stored array → the array a viewer displays.
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),  # rotate 90° clockwise
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),  # rotate 90° counter-clockwise
}


STORED = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}


def with_orientation(image: Image.Image, path: Path, orientation: int, **save) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)
    return path


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_every_exif_orientation_is_applied_exactly(tmp_path, orientation):
    path = with_orientation(Image.fromarray(RGB8), tmp_path / "o.png", orientation)
    np.testing.assert_array_equal(decoded(path), DISPLAYED[orientation](RGB8))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_jpeg_decodes_as_displayed(tmp_path, orientation):
    shown = np.full((24, 40, 3), 200, np.uint8)  # what the viewer shows: wide, red block at the top left
    shown[:8, :8] = (220, 20, 20)
    stored = STORED[orientation](shown)  # what the camera writes
    assert np.array_equal(DISPLAYED[orientation](stored), shown)
    path = with_orientation(Image.fromarray(np.ascontiguousarray(stored)), tmp_path / "o.jpg", orientation, quality=95)
    with Image.open(path) as im:
        raw = np.asarray(im.convert("RGB"))
    pixels = decoded(path)
    np.testing.assert_array_equal(pixels, DISPLAYED[orientation](raw))  # the same decode, transposed
    assert pixels.shape == shown.shape and np.abs(pixels.astype(int) - shown).mean() < 3
    assert pixels[2, 2, 0] > 180 and pixels[2, 2, 1] < 60  # the block is where the viewer shows it


# --- transparency --------------------------------------------------------------------------------------------

WHITE = np.array([255, 255, 255])


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(float)
    return (rgb * a + WHITE * (255 - a)) / 255


def test_alpha_is_composited_on_white_whatever_colour_hides_under_it(tmp_path):
    alpha = RNG.integers(0, 256, RGB8.shape[:2]).astype(np.uint8)
    alpha[0, :3] = (0, 255, 128)
    other = RGB8.copy()
    other[alpha == 0] = RNG.integers(0, 256, (int((alpha == 0).sum()), 3))  # another editor, another hidden colour
    paths = []
    for name, rgb in (("a.png", RGB8), ("b.png", other)):
        paths.append(tmp_path / name)
        Image.fromarray(np.dstack([rgb, alpha])).save(paths[-1])
    first = decoded(paths[0])
    np.testing.assert_allclose(first, composite(RGB8, alpha), atol=1)
    np.testing.assert_array_equal(first[0, 0], WHITE)
    np.testing.assert_array_equal(first[0, 1], RGB8[0, 1])
    np.testing.assert_array_equal(decoded(paths[1]), first)  # same picture, same pixels
    np.testing.assert_array_equal(decoded(paths[0]), first)  # and on every read


def test_gray_alpha_palette_and_colour_key_images_use_the_same_background(tmp_path):
    alpha = np.where(GRAY8 > 128, 255, 0).astype(np.uint8)
    expected = np.where(alpha[..., None] == 0, 255, np.repeat(GRAY8[..., None], 3, axis=2))
    Image.fromarray(np.dstack([GRAY8, alpha]), "LA").save(tmp_path / "la.png")
    palette = Image.fromarray(GRAY8).convert("P")  # a grey palette holds every value here
    key = palette.getpixel((0, 0))
    for suffix in ("png", "gif"):
        palette.save(tmp_path / f"p.{suffix}", transparency=key)
    Image.fromarray(RGB8).save(tmp_path / "key.png", transparency=tuple(int(v) for v in RGB8[0, 0]))
    Image.fromarray(GRAY8.astype(np.uint16) * 257).save(tmp_path / "key16.png", transparency=int(GRAY8[0, 0]) * 257)

    np.testing.assert_array_equal(decoded(tmp_path / "la.png"), expected)
    for name, mode in (("p.png", "P"), ("p.gif", "P"), ("key.png", "RGB"), ("key16.png", "I;16")):
        assert opened_mode(tmp_path / name) == mode
        pixels = decoded(tmp_path / name)
        np.testing.assert_array_equal(pixels[0, 0], WHITE, err_msg=name)
        hidden = (RGB8 == RGB8[0, 0]).all(axis=2) if name == "key.png" else GRAY8 == GRAY8[0, 0]
        shown = np.repeat(GRAY8[..., None], 3, axis=2) if name != "key.png" else RGB8
        np.testing.assert_array_equal(pixels[~hidden], shown[~hidden], err_msg=name)
        np.testing.assert_array_equal(decoded(tmp_path / name), pixels, err_msg=name)


def test_palette_with_alpha_band_is_composited_like_rgba():
    """PA has no file format Pillow writes, so the decoded image goes through the loader's last step directly."""
    rgba = Image.fromarray(np.dstack([RGB8, np.full(RGB8.shape[:2], 100, np.uint8)]))
    pa = rgba.convert("PA")
    expected = composite(np.asarray(pa.convert("RGB")).astype(float), np.full(RGB8.shape[:2], 100))
    np.testing.assert_allclose(np.asarray(images._as_seen(pa)), expected, atol=1)


# --- size ----------------------------------------------------------------------------------------------------

SIDE = 8200  # 8200² pixels > MAX_PIXELS = 2^26


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("large")
    Image.new("L", (SIDE, SIDE), 90).save(folder / "large.jpg", quality=50)
    Image.new("1", (SIDE, SIDE), 1).save(folder / "large.png", compress_level=1)
    return folder


def test_large_jpeg_is_decoded_at_reduced_size(large, monkeypatch):
    assert SIDE * SIDE > images.MAX_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIDE * SIDE // 3)  # Pillow alone would refuse before drafting
    image = load_image(large / "large.jpg")
    assert (
        image.mode == "RGB"
        and max(image.size) >= images.DRAFT_SIDE
        and image.size[0] * image.size[1] <= images.MAX_PIXELS
    )
    assert image.size == (-(-SIDE // 8),) * 2  # DCT scaling by 1/8, rounded up
    assert np.abs(np.asarray(image).astype(int) - 90).max() <= 1
    assert Image.MAX_IMAGE_PIXELS == SIDE * SIDE // 3  # Pillow's setting is left as it was


def test_large_png_is_skipped_with_its_size(large, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIDE * SIDE - 1)  # Pillow would warn
    with pytest.raises(DecodeError) as error:
        load_image(large / "large.png")
    assert str(error.value) == f"image too large ({SIDE}×{SIDE})"


# --- end to end ----------------------------------------------------------------------------------------------


def test_16_bit_copies_of_faces_give_the_same_clip_features(tmp_path, tiny_clip):
    faces = tmp_path / "faces"
    write_faces(faces, ["happy"], 2, size=32)
    for original in sorted((faces / "happy").glob("*.png")):
        with Image.open(original) as face:
            rgb, gray = np.asarray(face.convert("RGB")), np.asarray(face.convert("L"))
        Image.fromarray(gray).save(original.with_name(f"{original.stem}-gray8.png"))
        Image.fromarray(gray.astype(np.uint16) * 257).save(original.with_name(f"{original.stem}-gray16.png"))
        write_png(original.with_name(f"{original.stem}-rgb16.png"), rgb.astype(np.uint16) * 257, 2)
    out = tmp_path / "faces.h5"
    extract(sources.resolve(faces), out, ExtractConfig(clip_model=tiny_clip, teacher=None, num_workers=0,
                                                       batch_size=16, store_dtype="float32"))
    with CacheReader(out) as r:
        items = r.items()
        assert items.ok.all()
        rows = dict(zip(items.ids, r.image(r.image_keys()[0]), strict=True))
    for stem in ("happy/0", "happy/1"):
        np.testing.assert_allclose(rows[f"{stem}-rgb16.png"], rows[f"{stem}.png"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(rows[f"{stem}-gray16.png"], rows[f"{stem}-gray8.png"], rtol=0, atol=1e-6)
        assert not np.allclose(rows[f"{stem}-gray8.png"], rows[f"{stem}.png"], atol=1e-3)  # gray is really gray


def test_collate_stacks_each_transform_and_in_a_worker_into_shared_memory():
    """What the main process gets is torch.stack of each transform's tensors; a DataLoader worker stacks them in
    shared memory already, so the batch is not copied there again on its way out."""
    import torch
    from torch.utils.data import DataLoader

    from expclip.stages.extract.loading import collate

    batch = [(i, [torch.full((3, 4, 4), float(i)), torch.full((2,), i, dtype=torch.uint8)], "") for i in range(3)]
    index, tensors, errors = collate(batch)
    assert index == [0, 1, 2] and errors == ["", "", ""]
    assert torch.equal(tensors[0], torch.stack([b[1][0] for b in batch]))
    assert torch.equal(tensors[1], torch.stack([b[1][1] for b in batch])) and tensors[1].dtype == torch.uint8
    assert not tensors[0].is_shared()  # in the main process nothing is shared for nothing
    in_worker = DataLoader(batch, batch_size=3, num_workers=1,
                           collate_fn=lambda b: [t.is_shared() for t in collate(b)[1]])
    assert next(iter(in_worker)) == [True, True]
