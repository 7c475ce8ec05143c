"""What preprocessing one image costs, and how far the fast path moves it (a benchmark, not a
test: nothing is asserted).

For photo-like JPEGs of each size (inputs/images.py `photo_jpeg`, quality 90): the time of
the service's earlier path (full decode, torchvision's transform, `.numpy()`), of the exact
path and of the fast path (a DCT-scaled decode) on one thread, interleaved, medians of
`--repeats`; the scale the fast path decoded at and its largest input difference. With
`--model-uri`, the registered model runs both paths' tensors and the agreement is printed
as the registration records it (`tuner.decode.*`).

    python benchmarks/decode.py
    python benchmarks/decode.py --model resnet50 --model-uri models:/tuner-resnet50@candidate \\
        --tracking-uri sqlite:///$PWD/mlflow.db
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import numpy as np

SIZES = ((500, 375), (640, 480), (1920, 1080), (4032, 3024))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help="whose preprocessing (torchvision name or module:factory)")
    ap.add_argument("--size", type=int, default=224, help="the model's input size")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--images", type=int, default=3, help="distinct images per size")
    ap.add_argument("--model-uri", help="a registered model: its agreement on the photo-like set")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from tuner.inputs.images import ImagePrep, photo_jpeg
    from tuner.inputs.models import image_preprocessing

    torch.set_num_threads(1)  # what one decoder thread of a replica has
    transform, how, _ = image_preprocessing(args.model, "random", args.size)
    prep = ImagePrep.of(transform)
    print(f"{args.model}: {how}; one thread, medians of {args.repeats} x {args.images} image(s) per size\n")
    print("| image | JPEG KB | earlier path ms | exact ms | fast ms | fast scale | fast vs exact: max / mean diff |")
    print("|---|---|---|---|---|---|---|")
    for w, h in SIZES:
        images = [photo_jpeg(w, h, i) for i in range(args.images)]
        times: dict[str, list[float]] = {"earlier": [], "exact": [], "fast": []}
        paths = {
            "earlier": lambda d: transform(Image.open(io.BytesIO(d)).convert("RGB")).numpy(),
            "exact": lambda d: prep(d, fast=False),
            "fast": lambda d: prep(d, fast=True),
        }
        for _ in range(args.repeats):
            for data in images:
                for name, fn in paths.items():  # interleaved: a slow spell of the box hits all three
                    start = time.perf_counter()
                    fn(data)
                    times[name].append((time.perf_counter() - start) * 1000)
        diffs = [np.abs(prep(d, fast=True)[0] - prep(d, fast=False)[0]) for d in images]
        scale = prep(images[0], fast=True)[1]
        kb = statistics.mean(len(d) for d in images) / 1000
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {w}x{h} | {kb:.0f} | {med['earlier']:.1f} | {med['exact']:.1f} | {med['fast']:.1f} | 1/{scale} | "
              f"{max(float(d.max()) for d in diffs):.3f} / {statistics.mean(float(d.mean()) for d in diffs):.4f} |")
    if args.model_uri:
        import mlflow.pyfunc

        from tuner.inputs.images import PHOTO_SIZES, measure_agreement, photo_set

        with tempfile.TemporaryDirectory(prefix="tuner-decode-bench-") as tmp:
            mlflow.set_tracking_uri(args.tracking_uri)
            model = mlflow.pyfunc.load_model(args.model_uri, dst_path=tmp)
            where = "photo-like JPEGs (synthetic), " + ", ".join(f"{w}x{h}" for w, h in PHOTO_SIZES)
            a = measure_agreement(prep, photo_set(), model.predict, where)
        print(f"\n{args.model_uri}: {a.text(0.01)}")


if __name__ == "__main__":
    main()
