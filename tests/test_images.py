"""The service's image path (tuner/inputs/images.py): the exact path is the search's own
preprocessing; the fast path (a JPEG decoded at a reduced DCT scale) stays close to it on
photo-like images of several sizes, colour modes and orientations; what cannot be scaled
takes the exact path unchanged; the agreement is measured and judged as documented."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tuner.inputs.data import image_transform
from tuner.inputs.images import ImagePrep, TooManyPixels, measure_agreement, photo_jpeg
from tuner.inputs.models import image_preprocessing

# The ImageNet convention at 56 px (resize 64): a 640x480 JPEG decodes at 1/4, 4032x3024 at 1/8.
PREP = ImagePrep.of(image_transform(56, None)[0])


def _encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(photo_jpeg(w, h, seed))).convert("RGB")


@pytest.mark.parametrize("model, size", [("resnet50", 224), ("tiny_models:small_cnn", 32)])
def test_the_exact_path_is_the_searchs_preprocessing(model, size):
    """The weights' preset (resnet50: resize 232, bilinear) and the convention alike, on a
    JPEG and a PNG: what inputs/data.py gives the search, to float rounding."""
    transform, _, _ = image_preprocessing(model, "random", size)
    prep = ImagePrep.of(transform)
    for data in (photo_jpeg(500, 375, 1), _encode(_photo(333, 500, 2), "PNG")):
        want = transform(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
        got, scale = prep(data, fast=False)
        assert scale == 1 and got.dtype == np.float32 and got.flags.c_contiguous
        assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize(
    "make, scale",
    [
        (lambda: photo_jpeg(640, 480, 3), 4),
        (lambda: photo_jpeg(1920, 1080, 4), 8),
        (lambda: _encode(_photo(640, 480, 5), progressive=True, quality=90), 4),
        (lambda: _encode(_photo(640, 480, 6).convert("L"), quality=90), 4),  # grayscale
        (lambda: _encode(_photo(640, 480, 7).convert("CMYK"), quality=90), 4),
    ],
    ids=["640x480", "1080p", "progressive", "grayscale", "cmyk"],
)
def test_the_fast_path_decodes_scaled_and_stays_close_to_the_exact_one(make, scale):
    data = make()
    exact, s_exact = PREP(data, fast=False)
    fast, s_fast = PREP(data, fast=True)
    assert (s_exact, s_fast) == (1, scale)
    assert fast.shape == exact.shape == (3, 56, 56)
    diff = np.abs(fast - exact)
    # in normalised units (one grey level is about 0.017): close on average, never far
    assert diff.mean() < 0.08 and diff.max() < 1.5, (diff.mean(), diff.max())


def test_exif_orientation_is_applied_on_both_paths():
    """A phone photo stored landscape with Orientation 6 (rotate 90 clockwise to view) is
    preprocessed upright: as the same pixels rotated by hand."""
    im = _photo(800, 600, 8)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = _encode(im, quality=95, exif=exif.tobytes())
    upright = _encode(im.transpose(Image.Transpose.ROTATE_270), quality=95)
    for fast in (False, True):
        got, _ = PREP(tagged, fast=fast)
        want, _ = PREP(upright, fast=fast)
        assert np.abs(got - want).mean() < 0.05
        sideways, _ = PREP(_encode(im, quality=95), fast=fast)
        assert np.abs(got - sideways).mean() > 2 * np.abs(got - want).mean()


def test_what_cannot_be_scaled_takes_the_exact_path_unchanged():
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 4), dtype=np.uint8), "RGBA")
    small = photo_jpeg(90, 70, 9)  # shorter side 70: no DCT scale keeps it at the resize target 64
    for data in (_encode(rgba, "PNG"), small):
        exact, s1 = PREP(data, fast=False)
        fast, s2 = PREP(data, fast=True)
        assert s1 == s2 == 1 and np.array_equal(exact, fast)


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded():
    with pytest.raises(TooManyPixels, match="at most 1 megapixels"):
        PREP(photo_jpeg(1600, 1200, 10), fast=True, max_pixels=10**6)


def test_the_agreement_is_judged_by_top1_where_outputs_tell_classes_apart_else_by_distribution():
    images = [photo_jpeg(640, 480, i) for i in range(4)] + [photo_jpeg(1920, 1080, 9)]
    w = np.random.default_rng(0).standard_normal((3 * 56 * 56, 10)).astype(np.float32)

    def informative(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ w

    a = measure_agreement(PREP, images, informative, "test images")
    assert a.images == 5 and a.scaled == 5 and a.max_abs_diff > 0
    assert a.judged_by == "top-1" and a.value == a.top1 and 0 <= a.top1 <= 1
    tags = a.tags(0.01)
    assert tags["tuner.decode.fast"] == str(a.meets(0.01)).lower() and tags["tuner.decode.limit"] == "0.01"
    assert "5 (5 decoded scaled): test images" == tags["tuner.decode.images"]

    def degenerate(x: np.ndarray) -> np.ndarray:  # every input the same class, as a random resnet50's
        out = np.zeros((len(x), 10), np.float32)
        out[:, 0] = 50.0
        out[:, 1] = x.reshape(len(x), -1).mean(1)
        return out

    d = measure_agreement(PREP, images, degenerate, "test images")
    assert d.judged_by == "distribution" and d.top1 == 1.0 and d.value == pytest.approx(1 - d.mean_tv)
    assert d.meets(0.01)

    def fragile(x: np.ndarray) -> np.ndarray:  # its class hangs on the fourth decimal of the mean
        return np.eye(10, dtype=np.float32)[(x.reshape(len(x), -1).mean(1) * 1e4).astype(int) % 10] * 10

    f = measure_agreement(PREP, images, fragile, "test images")
    assert f.judged_by == "top-1" and f.top1 < 1.0 and not f.meets(0.01)
