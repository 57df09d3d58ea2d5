import cv2
import numpy as np
import pytest

from seglib.data.pairs import PairError, iter_pairs, read_pair, scan_folder


def write_pair(path, left=(255, 0, 0), right=(0, 0, 255), size=(256, 512), channels=3, dtype=np.uint8):
    """A pair image: left half one RGB colour, right half another (written as BGR by OpenCV)."""
    h, w = size
    img = np.zeros((h, w, 3), np.float64)
    img[:, : w // 2] = left
    img[:, w // 2 :] = right
    img = img[:, :, ::-1]  # RGB -> BGR
    if dtype == np.uint16:
        img = img * 257
    img = img.astype(dtype)
    if channels == 4:
        img = np.dstack([img, np.full((h, w), 7, dtype)])
    elif channels == 1:
        img = img[:, :, 0]
    cv2.imwrite(str(path), img)
    return path


def test_read_pair_splits_and_converts_to_rgb(tmp_path):
    photo, mask = read_pair(write_pair(tmp_path / "p.png", left=(200, 10, 20), right=(5, 15, 250)))
    assert photo.shape == mask.shape == (256, 256, 3) and photo.dtype == np.uint8
    assert tuple(photo[10, 10]) == (200, 10, 20)
    assert tuple(mask[10, 10]) == (5, 15, 250)


def test_resize_keeps_mask_colours(tmp_path):
    rng = np.random.default_rng(0)
    colours = np.array([[128, 64, 128], [70, 70, 70], [0, 0, 142], [220, 20, 60]], np.uint8)
    mask = colours[rng.integers(0, 4, (256, 256))]
    photo = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "p.png"), np.concatenate([photo, mask], 1)[:, :, ::-1])
    photo_small, mask_small = read_pair(tmp_path / "p.png", size=64)
    assert photo_small.shape == mask_small.shape == (64, 64, 3)
    seen = {tuple(c) for c in mask_small.reshape(-1, 3)}
    assert seen <= {tuple(c) for c in colours}


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"this is not an image at all" * 10), "not a readable image"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: write_pair(p, size=(256, 256)), "twice as wide"),
        (lambda p: write_pair(p, size=(100, 512)), "twice as wide"),
        (lambda p: write_pair(p, channels=1), "grayscale"),
    ],
    ids=["corrupt", "empty", "square", "too-wide", "grayscale"],
)
def test_bad_files_raise_pair_error_naming_file(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(PairError) as info:
        read_pair(path)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert info.value.path == str(path)


@pytest.mark.parametrize("end_marker", [b"", b"\xff\xd9"], ids=["cut", "cut-then-end-marker-restored"])
def test_truncated_jpeg_is_rejected(tmp_path, end_marker):
    """Also when the end-of-image marker was put back: a lenient decoder returns grey rows then."""
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "good.jpg"), rng.integers(0, 255, (256, 512, 3), dtype=np.uint8))
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2] + end_marker)
    with pytest.raises(PairError, match="truncated or corrupt JPEG"):
        read_pair(tmp_path / "cut.jpg")


@pytest.mark.parametrize("width, height", [(20000, 10000), (100000, 50000)])
def test_an_oversized_image_is_refused_from_its_header_before_decoding(tmp_path, width, height, declared_png):
    """A small PNG that declares a huge image (a decompression bomb): refused without decoding."""
    bomb = declared_png(tmp_path / "bomb.png", width, height)
    with pytest.raises(PairError, match=r"image is .*over the limit"):
        read_pair(bomb)
    if width * height < 178_956_970:  # within twice Pillow's own limit: our check, with the size
        with pytest.raises(PairError, match=rf"image is {width}x{height} .* over the limit of 50 MP \(--max-pixels\)"):
            read_pair(bomb)
    ok = write_pair(tmp_path / "small.png")
    with pytest.raises(PairError, match="over the limit of 0 MP"):
        read_pair(ok, max_pixels=100_000)


def test_a_decoder_error_is_that_files_error(tmp_path, monkeypatch):
    import seglib.data.pairs

    def broken(*args, **kwargs):
        raise cv2.error("OpenCV(5.0) error: (-215:Assertion failed) size.width>0 in function 'imdecode_'")

    monkeypatch.setattr(seglib.data.pairs.cv2, "imdecode", broken)
    with pytest.raises(PairError, match="not a readable image .*Assertion failed"):
        read_pair(write_pair(tmp_path / "p.png"))


def test_missing_file(tmp_path):
    with pytest.raises(PairError, match="cannot read file"):
        read_pair(tmp_path / "nope.jpg")


def test_rgba_drops_alpha(tmp_path):
    photo, mask = read_pair(write_pair(tmp_path / "a.png", left=(1, 2, 3), right=(9, 8, 7), channels=4))
    assert photo.shape[-1] == 3 and tuple(photo[0, 0]) == (1, 2, 3) and tuple(mask[0, 0]) == (9, 8, 7)


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    photo, mask = read_pair(write_pair(tmp_path / "d.png", left=(255, 128, 0), right=(0, 64, 255), dtype=np.uint16))
    assert photo.dtype == np.uint8
    assert tuple(photo[0, 0]) == (255, 128, 0) and tuple(mask[0, 0]) == (0, 64, 255)


def test_scan_folder_natural_order_and_ignored(tmp_path):
    for n in (10, 2, 1):
        write_pair(tmp_path / f"{n}.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "sub").mkdir()
    images, ignored = scan_folder(tmp_path)
    assert [p.name for p in images] == ["1.jpg", "2.jpg", "10.jpg"]
    assert sorted(p.name for p in ignored) == [".DS_Store", "notes.txt"]


def test_iter_pairs_keeps_order_and_reports_errors(tmp_path):
    files = [write_pair(tmp_path / f"{i}.png", left=(i, i, i)) for i in range(12)]
    (tmp_path / "5.png").write_bytes(b"garbage")
    results = list(iter_pairs(files, size=32, workers=3))
    assert [p for p, _ in results] == files
    assert isinstance(results[5][1], PairError)
    assert all(res[0][0, 0, 0] == i for i, (_, res) in enumerate(results) if i != 5)
