"""An image, from its encoded bytes to the rows a model takes: the search's preprocessing
(inputs/data.py `image_transform`) as plain values, run on uint8 pixels until one last float
step, on two paths (docs/serving.md "Decoding"):

    exact   the image decoded at full size, then resized: what the search's `--data` images
            went through (torchvision's transforms on a PIL image resize on uint8 too)
    fast    a JPEG decoded at the smallest DCT scale (1/2, 1/4 or 1/8: Pillow's `draft`,
            libjpeg-turbo's scaled decode) whose size still covers the resize target, then
            the same resize and crop. Other formats, and JPEGs too small to scale, take
            the exact path unchanged.

Both apply the EXIF orientation, so a phone photo is seen upright. The float conversion and
normalisation come last, once, in numpy: no torch op runs here, so a thread that
preprocesses never starts a torch (OpenMP) thread pool of its own beside the model's.

How far the fast path moves a model's input is measured, not assumed (`agreement`): the
registration measures it on the search's images (deploy/register.py), and `tuner serve`
takes the fast path only where that figure met the search's accuracy limit.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DECODES = ("auto", "fast", "exact")  # `tuner serve --decode`: auto follows the registered agreement


class TooManyPixels(ValueError):
    """An image larger than a service decodes (refused before its pixels are decoded)."""


@dataclass(frozen=True)
class ImagePrep:
    """Resize the shorter side to `resize` (antialiased), centre-crop `crop` x `crop`, scale
    to [0, 1], normalise by `mean` / `std`: torchvision's ImageClassification preset and the
    ImageNet convention alike."""

    resize: int
    crop: int
    interpolation: str  # torchvision's InterpolationMode value: bilinear, bicubic, nearest
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, transform: Any) -> ImagePrep:
        """From what `image_transform` returns: the weights' preset or the convention's Compose."""
        from torchvision import transforms as T

        if isinstance(transform, T.Compose):
            by = {type(t): t for t in transform.transforms}
            resize, crop, norm = by[T.Resize], by[T.CenterCrop], by[T.Normalize]
            size = resize.size if isinstance(resize.size, int) else resize.size[0]
            return cls(int(size), int(crop.size[0]), resize.interpolation.value, tuple(norm.mean), tuple(norm.std))
        return cls(int(transform.resize_size[0]), int(transform.crop_size[0]), transform.interpolation.value,
                   tuple(transform.mean), tuple(transform.std))  # fmt: skip

    def open(self, data: bytes | Path, fast: bool, max_pixels: int = 0) -> tuple[Any, int]:
        """The image, upright and RGB, and the JPEG scale it was decoded at (1: full size).
        Raises PIL's own errors for bytes it cannot read, TooManyPixels past `max_pixels`."""
        from PIL import Image, ImageOps

        im: Any = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        if max_pixels and im.width * im.height > max_pixels:
            raise TooManyPixels(f"an image of {im.width}x{im.height} pixels; at most {max_pixels // 10**6} megapixels")
        full = im.size
        if fast and im.format == "JPEG":
            im.draft("RGB", self.resized(*im.size))  # never below the requested size
        scale = full[0] // im.size[0] if im.size != full else 1
        im = ImageOps.exif_transpose(im)
        return (im if im.mode == "RGB" else im.convert("RGB")), scale

    def resized(self, w: int, h: int) -> tuple[int, int]:
        """The size the resize makes of a w x h image (torchvision's rule for one int)."""
        if w <= h:
            return self.resize, int(self.resize * h / w)
        return int(self.resize * w / h), self.resize

    def rows(self, im: Any) -> np.ndarray:
        """A PIL RGB image -> float32 [3, crop, crop], as torchvision's transform makes it."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        im = F.resize(im, [self.resize], InterpolationMode(self.interpolation), antialias=True)  # PIL, uint8
        im = F.center_crop(im, [self.crop])
        x = np.asarray(im, dtype=np.float32)  # [H, W, 3], the one float copy
        x *= np.asarray([1 / (255 * s) for s in self.std], np.float32)
        x -= np.asarray([m / s for m, s in zip(self.mean, self.std, strict=True)], np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def __call__(self, data: bytes | Path, fast: bool, max_pixels: int = 0) -> tuple[np.ndarray, int]:
        im, scale = self.open(data, fast, max_pixels)
        return self.rows(im), scale


@dataclass(frozen=True)
class Agreement:
    """The fast path against the exact one on some images (`measure_agreement`)."""

    images: int
    scaled: int  # of which the fast path decoded at a reduced DCT scale
    max_abs_diff: float  # of the preprocessed tensors, in normalised units
    top1: float  # fraction of images whose model top-1 class is the same on both paths
    mean_tv: float  # mean total-variation distance of the two softmax distributions
    judged_by: str  # top-1 | distribution (the exact outputs do not tell classes apart)
    value: float  # the agreement judged: top1, or 1 - mean_tv
    where: str  # which images: the search's --data files, or photo-like JPEGs of several sizes

    def meets(self, max_drop: float) -> bool:
        return 1.0 - self.value <= max_drop + 1e-12

    def tags(self, max_drop: float) -> dict[str, str]:
        """The registered version's `tuner.decode.*` tags (serve/source.py reads them)."""
        return {
            "tuner.decode.fast": str(self.meets(max_drop)).lower(),
            "tuner.decode.agreement": f"{self.value:.4f}",
            "tuner.decode.judged_by": self.judged_by,
            "tuner.decode.top1": f"{self.top1:.4f}",
            "tuner.decode.mean_tv": f"{self.mean_tv:.3g}",
            "tuner.decode.max_abs_diff": f"{self.max_abs_diff:.3g}",
            "tuner.decode.images": f"{self.images} ({self.scaled} decoded scaled): {self.where}",
            "tuner.decode.limit": f"{max_drop:g}",
        }

    def text(self, max_drop: float) -> str:
        verdict = "the service decodes JPEGs fast" if self.meets(max_drop) else "the service keeps the exact decode"
        return (
            f"fast JPEG decode against exact on {self.images} image(s) ({self.scaled} scaled; {self.where}): "
            f"{self.judged_by} agreement {self.value:.4f} (top-1 {self.top1:.4f}, mean TV {self.mean_tv:.2g}, "
            f"input max |diff| {self.max_abs_diff:.3g}); limit {max_drop:g}: {verdict}"
        )


# Without --data: photo-like JPEGs at the sizes a service sees, and how many of each.
PHOTO_SIZES = ((500, 375), (640, 480), (1920, 1080), (4032, 3024))
PHOTO_COUNTS = (4, 4, 2, 2)


def photo_jpeg(w: int, h: int, seed: int, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth shading and shapes with sharp edges, fine grain on top (what
    a DCT-scaled decode would smear if anything does). Not a real photo: it says so where used."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    coarse = rng.random((max(2, h // 64), max(2, w // 64), 3)) * 255
    im = Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 20, w // 3)), y0 + int(rng.integers(h // 20, h // 3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    im = im.filter(ImageFilter.BoxBlur(1))  # a lens's softness at the edges
    grain = rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(im, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@functools.cache
def photo_set(seed: int = 0) -> list[bytes]:
    return [photo_jpeg(w, h, seed + i * 97 + w) for (w, h), n in zip(PHOTO_SIZES, PHOTO_COUNTS, strict=True)
            for i in range(n)]  # fmt: skip


def measure_agreement(prep: ImagePrep, images: list[bytes], predict: Any, where: str) -> Agreement:
    """Both paths on `images`, the model (`predict`: float32 [N, C, H, W] of any length ->
    outputs, as the registered model's loader takes them) on both tensors. Judged by top-1 where the exact outputs
    name more than one class, else by the softmax distributions (a random-init model can map
    every input to one class: its top-1 agrees trivially)."""
    exact, fast, scaled = [], [], 0
    for data in images:
        exact.append(prep(data, fast=False)[0])
        x, s = prep(data, fast=True)
        fast.append(x)
        scaled += s > 1
    xe, xf = np.stack(exact), np.stack(fast)
    ye, yf = (np.asarray(predict(x), dtype=np.float64) for x in (xe, xf))
    pe, pf = _softmax(ye), _softmax(yf)
    top1 = float((ye.argmax(1) == yf.argmax(1)).mean())
    tv = float((0.5 * np.abs(pe - pf).sum(1)).mean())
    informative = len(set(ye.argmax(1).tolist())) > 1
    judged = "top-1" if informative else "distribution"
    value = top1 if informative else 1.0 - tv
    return Agreement(len(images), scaled, float(np.abs(xe - xf).max()), top1, tv, judged, value, where)


def _softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
