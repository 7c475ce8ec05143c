"""What a client sends to `tuner serve` and what it gets back (docs/serving.md).

A request body is one of (the Content-Type says which; without one, the first bytes do):

    image    JPEG or PNG bytes (image/jpeg, image/png): one image, decoded and preprocessed
             with the model's own transforms, as the search's image data was (inputs/images.py:
             the exact path, or a JPEG decoded at a reduced DCT scale, the fast one)
    tensor   .npy bytes (application/x-npy): float rows already preprocessed,
             [C, H, W] or [N, C, H, W]
    json     MLflow's scoring JSON (application/json): {"inputs": rows} or {"instances": rows}

The answer is JSON: an image's top-k classes (`{"top_k": [[{"class", "name", "score"}, ...]]}`,
scores are softmax probabilities, names where the weights have them), or for a tensor or
JSON request `{"predictions": outputs}` as `mlflow models serve` answers. `?top_k=K` asks for
the top k of any request; `Accept: application/x-npy` gets the raw fp32 outputs as .npy.

Anything else is a `BadRequest` carrying its HTTP status and a message that names the
problem and what is allowed. No Ray here: the decoding is tested in milliseconds.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from tuner.inputs.images import TooManyPixels

NPY = "application/x-npy"
JPEG_MAGIC, PNG_MAGIC, NPY_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"\x93NUMPY"
IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png")
MAX_PIXELS = 40_000_000  # a larger image is refused before it is decoded into memory
ALLOWED = "a JPEG or PNG image (image/jpeg, image/png), an .npy array (application/x-npy) or MLflow JSON"

ImageDecoder = Callable[[bytes], tuple[np.ndarray, int]]  # bytes -> [C, H, W] float32, the JPEG scale decoded at


class BadRequest(Exception):
    """A request the service refuses: its HTTP status and what is wrong with it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Decoded:
    rows: np.ndarray  # float32 [N, C, H, W], contiguous
    kind: str  # image | tensor | json
    preprocess_ms: float  # decoding and preprocessing, in this process
    scale: int = 1  # an image: the JPEG DCT scale it was decoded at (1: full size, 2, 4 or 8)


def kind_of(body: bytes, content_type: str) -> str:
    """image, tensor or json: the Content-Type where it names one, else the body's first bytes."""
    ct = content_type.split(";")[0].strip().lower()
    if not body:
        raise BadRequest(400, f"an empty body: send {ALLOWED}")
    if ct in IMAGE_TYPES:
        return "image"
    if ct in (NPY, "application/npy"):
        return "tensor"
    if ct == "application/json":
        return "json"
    if ct not in ("", "application/octet-stream", "application/x-www-form-urlencoded"):  # curl's default
        raise BadRequest(415, f"Content-Type {ct!r} is not served; send {ALLOWED}")
    if body.startswith((JPEG_MAGIC, PNG_MAGIC)):
        return "image"
    if body.startswith(NPY_MAGIC):
        return "tensor"
    if body.lstrip()[:1] == b"{":
        return "json"
    raise BadRequest(
        415, f"the body is neither an image, an .npy array nor JSON (it starts {body[:8]!r}); send {ALLOWED}"
    )


def decode(body: bytes, kind: str, shape: tuple[int, int, int], max_rows: int, image: ImageDecoder) -> Decoded:
    """`body` as `kind` -> rows the model takes; BadRequest for anything it cannot take."""
    start = time.perf_counter()
    scale = 1
    if kind == "image":
        row, scale = _image(body, image)
        x = row[None]
    elif kind == "tensor":
        x = _npy(body)
    else:
        x = _json_rows(body)
    rows = check_rows(x, shape, max_rows)
    return Decoded(rows, kind, (time.perf_counter() - start) * 1000, scale)


def _image(body: bytes, image: ImageDecoder) -> tuple[np.ndarray, int]:
    from PIL import Image

    try:
        return image(body)
    except TooManyPixels as e:
        raise BadRequest(413, str(e)) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's errors for bad bytes
        raise BadRequest(400, f"not a readable image ({type(e).__name__}: {str(e)[:200]}); send {ALLOWED}") from None


def _npy(body: bytes) -> np.ndarray:
    try:
        x = np.load(io.BytesIO(body), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise BadRequest(400, f"not a readable .npy array ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(x, np.ndarray):
        raise BadRequest(400, "an .npz archive; send one .npy array")
    return x


def _json_rows(body: bytes) -> np.ndarray:
    try:
        doc = orjson.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"not valid JSON ({str(e)[:200]})") from None
    key = next((k for k in ("inputs", "instances") if isinstance(doc, dict) and k in doc), None)
    if key is None:
        got = sorted(doc)[:5] if isinstance(doc, dict) else type(doc).__name__
        raise BadRequest(400, f'MLflow JSON needs an "inputs" or "instances" key (got {got})')
    try:
        return np.asarray(doc[key], dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise BadRequest(422, f'"{key}" is not a numeric array of equal-length rows ({str(e)[:200]})') from None


def check_rows(x: np.ndarray, shape: tuple[int, int, int], max_rows: int) -> np.ndarray:
    """[C, H, W] or [N, C, H, W] of finite numbers, at most `max_rows` -> float32 [N, C, H, W]."""
    want = f"[N, {', '.join(map(str, shape))}] (or [{', '.join(map(str, shape))}])"
    if x.dtype.kind not in "fiu":
        raise BadRequest(422, f"an array of dtype {x.dtype}; this model takes numbers, shape {want}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise BadRequest(
            422, f"an array of shape {list(x.shape)}; this model takes {want}, preprocessed; or send the image itself"
        )
    if len(x) == 0:
        raise BadRequest(422, "no rows: the array's first dimension is 0")
    if len(x) > max_rows:
        raise BadRequest(413, f"{len(x)} rows in one request; at most {max_rows} (`max_rows`)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise BadRequest(422, "the array holds NaN or infinite values")
    return x


def top_k_param(value: str | None, classes: int) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= classes:
        raise BadRequest(400, f"top_k={value!r}; allowed: 1 to {classes} (the model's outputs)")
    return int(value)


def answer(
    outputs: np.ndarray, kind: str, accept: str, top_k: int | None, default_k: int, categories: list[str] | None
) -> tuple[bytes, str]:
    """The response body and its media type (module docstring)."""
    if NPY in accept:
        buf = io.BytesIO()
        np.save(buf, outputs.astype(np.float32, copy=False))
        return buf.getvalue(), NPY
    if kind == "image" or top_k is not None:
        k = min(top_k or default_k, outputs.shape[1])
        return orjson.dumps({"top_k": [_top(row, k, categories) for row in outputs]}), "application/json"
    # orjson writes a float32 array in its shortest exact form (0.12573022), in a 30th of
    # the time json.dumps of its floats takes (0.38 ms for 1000 outputs here).
    rows = np.ascontiguousarray(outputs, dtype=np.float32)
    return orjson.dumps({"predictions": rows}, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"


def _top(row: np.ndarray, k: int, categories: list[str] | None) -> list[dict[str, Any]]:
    p = np.exp(row - row.max())
    p /= p.sum()
    best = np.argsort(-p, kind="stable")[:k]
    names = categories if categories and len(categories) == len(row) else None
    return [{"class": int(i), "name": names[i] if names else None, "score": round(float(p[i]), 6)} for i in best]
