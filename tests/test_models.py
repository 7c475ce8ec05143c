"""Models, weights and data (docs/models-data.md): real torchvision
architectures at low resolution, real image folders written by the tests, a small CNN
trained here so that top-1 on real labels means something, and every bad weights/data input."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tuner.config.space import TimingConfig
from tuner.core.errors import ConfigError
from tuner.core.variant import Variant
from tuner.inputs.data import class_index, load_eval_data
from tuner.inputs.models import ModelSpec, check_inputs, load_model, resolve_weights
from tuner.inputs.reference import prepare_reference
from tuner.measure.hardware import detect
from tuner.trial.evaluate import TrialSettings, evaluate

from conftest import FAST_TIMING
from tiny_models import SmallCNN, train_small_cnn, write_images, write_labeled_folder

SETTINGS = TrialSettings(TimingConfig(**FAST_TIMING))


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "mobilenet_v3_small",
        pytest.param("efficientnet_b0", marks=pytest.mark.slow),  # the BatchNorm path stays fast: mobilenet
        pytest.param("convnext_tiny", marks=pytest.mark.slow),  # 28M parameters; resnet18 covers the plain path
    ],
)
def test_torchvision_architectures_on_a_labeled_folder(tmp_path, name):
    write_labeled_folder(tmp_path / "data", ["0", "1", "2"], per_class=4)
    ref = prepare_reference(ModelSpec(name, "random"), input_size=32, n_eval=8, n_calib=4, data_dir=tmp_path / "data")
    assert ref.has_labels and ref.data.labels is not None
    assert ref.data.inputs.shape == (8, 3, 32, 32) and ref.data.calibration.shape == (4, 3, 32, 32)
    assert set(ref.data.labels.tolist()) <= {0, 1, 2}
    assert "labeled folder" in ref.data_label and "integer folder names" in ref.data_label
    assert "the weights' transforms" in ref.data_label  # torchvision's own preprocessing
    # Random-init mobilenet_v3 and efficientnet put out logits of about 1e-10: their BatchNorm
    # statistics are estimated so that variants can be judged; resnet and convnext are left alone.
    degenerate = name in ("mobilenet_v3_small", "efficientnet_b0")
    assert ref.weights_label.startswith("random-init (seed 0)")
    assert ("BatchNorm statistics estimated on the 4 calibration inputs" in ref.weights_label) == degenerate
    assert bool(ref.bn_stats) == degenerate
    assert float(ref.logits.abs().max()) > 1e-3
    out = evaluate(Variant(quantization="dynamic_int8", threads=1), ref, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "ok", out.error
    assert 0.0 <= out.top1 <= 1.0 and 0.0 <= out.top5 <= 1.0 and out.latency_p50_ms > 0


@pytest.mark.slow  # vit_b_16: 86M parameters to initialise
def test_vit_keeps_its_fixed_input_size():
    loaded = load_model(ModelSpec("vit_b_16", "random"))
    from tuner.inputs.models import input_shape

    assert input_shape(loaded.module, 32) == (3, 224, 224)


def test_calibration_and_eval_images_are_disjoint(tmp_path):
    write_labeled_folder(tmp_path, ["0", "1"], per_class=6)
    data = load_eval_data(tmp_path, (3, 32, 32), n_eval=6, n_calib=4, seed=0)
    assert data.eval_files is not None and len(data.eval_files) == 6
    # every calibration tensor differs from every eval tensor (distinct noisy images)
    dist = torch.cdist(data.calibration.flatten(1), data.inputs.flatten(1))
    assert dist.min() > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SmallCNN trained for a few seconds on three separable colour classes; its state dict on disk."""
    root = tmp_path_factory.mktemp("trained")
    train_small_cnn(root)
    return root


def test_top1_on_real_labels_matches_a_hand_computation(trained):
    spec = resolve_weights(ModelSpec("tiny_models:small_cnn", str(trained / "small_cnn.pt")))
    ref = prepare_reference(spec, input_size=32, n_eval=16, n_calib=8, data_dir=trained / "val")
    assert ref.weights_label.startswith("file:") and ref.data.eval_files is not None
    # By hand: open each eval image, preprocess with plain torchvision, run the trained model.
    model = SmallCNN()
    model.load_state_dict(torch.load(trained / "small_cnn.pt", weights_only=True))
    model.eval()
    imagenet = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    pre = T.Compose([T.Resize(37), T.CenterCrop(32), T.ToTensor(), imagenet])
    correct = 0
    for f in ref.data.eval_files:
        x = pre(Image.open(f).convert("RGB"))[None]
        correct += int(model(x).argmax(1).item() == int(f.split("/")[-2]))
    assert ref.baseline_quality == pytest.approx(correct / len(ref.data.eval_files))
    assert ref.baseline_quality >= 0.9  # the classes are separable and the model learned them


HW = detect()
NO_BF16 = "bf16 is not native on this host (no avx512_bf16/amx_bf16, no CUDA): evaluate() marks it infeasible"


@pytest.mark.parametrize(
    "variant",
    [
        # The reduced-precision path runs on every host through the int8 variants (fbgemm/x86: AVX2).
        dict(quantization="static_int8"),
        dict(quantization="dynamic_int8"),
        pytest.param(dict(precision="bf16"), marks=pytest.mark.skipif(not HW.bf16_native, reason=NO_BF16)),
    ],
    ids=["static_int8", "dynamic_int8", "bf16"],
)
def test_quantized_and_bf16_drops_are_measured_on_real_labels(trained, variant):
    spec = resolve_weights(ModelSpec("tiny_models:small_cnn", str(trained / "small_cnn.pt")))
    ref = prepare_reference(spec, input_size=32, n_eval=16, n_calib=8, data_dir=trained / "val")
    out = evaluate(Variant(threads=1, **variant), ref, SETTINGS)
    assert out.status == "ok", out.error
    assert out.quality == out.top1  # with labels, quality is top-1 accuracy
    assert out.accuracy_drop == pytest.approx((ref.baseline_quality - out.top1) / ref.baseline_quality)
    assert out.accuracy_drop <= 0.2, out  # separable classes: the variant keeps most of top-1
    print(f"{variant}: top1 {out.top1:.3f} vs fp32 {ref.baseline_quality:.3f}, drop {out.accuracy_drop:.3f}")


def test_unlabeled_folder_measures_fidelity_only(tmp_path, capsys):
    write_images(tmp_path, 10, (120, 120, 120), seed=1)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    ref = prepare_reference(ModelSpec("tiny_models:small_cnn", "random"), input_size=32, n_eval=6, n_calib=4,
                            data_dir=tmp_path)  # fmt: skip
    assert not ref.has_labels and ref.baseline_quality == 1.0
    assert "unlabeled folder" in ref.data_label and "1 unreadable skipped" in ref.data_label
    assert "skipped 1 unreadable image(s): broken.jpg" in capsys.readouterr().err


def test_empty_and_missing_folders_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="no images found"):
        load_eval_data(tmp_path, (3, 32, 32), 4, 2, 0)
    with pytest.raises(ConfigError, match="no such folder"):
        check_inputs("resnet18", "random", tmp_path / "missing")
    (tmp_path / "only.png").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"fewer than 2 readable images \(1 unreadable\)"):
        load_eval_data(tmp_path, (3, 32, 32), 4, 2, 0)


def test_class_folder_mapping_rule(tmp_path):
    cats = ["tench", "goldfish", "great white shark"]
    assert class_index(["2", "0"], None, 10, tmp_path)[0] == {"2": 2, "0": 0}
    assert class_index(["goldfish", "tench"], cats, 1000, tmp_path)[0] == {"goldfish": 1, "tench": 0}
    assert class_index(["n01443537", "n01440764"], None, 1000, tmp_path)[0] == {"n01443537": 1, "n01440764": 0}
    assert class_index(["dog", "cat"], None, 2, tmp_path) == ({"cat": 0, "dog": 1}, "sorted folder order")
    with pytest.raises(ConfigError, match=r"cannot map the class folders \['cat', 'dog'\] to the model's 1000"):
        class_index(["dog", "cat"], cats, 1000, tmp_path)
    with pytest.raises(ConfigError, match=r"\['12'\] map \(integer folder names\) to output indices >= the model's 10"):
        class_index(["1", "12"], None, 10, tmp_path)


# ---- --weights PATH -------------------------------------------------------------------------


def _load(path):
    return load_model(resolve_weights(ModelSpec("tiny_models:small_cnn", str(path))))


def test_weights_file_loads_and_is_labelled(tmp_path):
    model = SmallCNN()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pt")  # a Lightning-style wrapper works too
    loaded = _load(tmp_path / "ckpt.pt")
    assert loaded.weights_label == f"file:{(tmp_path / 'ckpt.pt').resolve()}"
    assert torch.equal(loaded.module.state_dict()["head.weight"], model.state_dict()["head.weight"])


def test_weights_file_mismatches_name_the_keys(tmp_path):
    sd = SmallCNN().state_dict()
    missing = {k: v for k, v in sd.items() if k != "head.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match=r"missing keys \['head.bias'\]"):
        _load(tmp_path / "missing.pt")
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(ConfigError, match=r"unexpected keys \['extra.weight'\]"):
        _load(tmp_path / "extra.pt")
    torch.save(SmallCNN(classes=3).state_dict(), tmp_path / "shape.pt")
    with pytest.raises(ConfigError, match=r"shape mismatches \['head.weight: file \(3, 32\) vs model \(10, 32\)'"):
        _load(tmp_path / "shape.pt")


class _Payload:
    """Unpickling this would run code; weights_only=True must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_weights_file_never_unpickles_code(tmp_path, capsys):
    torch.save({"head.weight": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="not a loadable state dict \\(weights_only=True\\)"):
        _load(tmp_path / "evil.pt")
    assert "unpickled arbitrary code" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no such file"):
        _load(tmp_path / "absent.pt")


def test_pretrained_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    monkeypatch.setattr("tuner.inputs.models._pretrained_available", lambda w: False)  # as offline: no download
    with pytest.raises(ConfigError) as e:
        resolve_weights(ModelSpec("resnet18", "pretrained"))
    msg = str(e.value)
    assert "no pretrained weights for `resnet18`" in msg and str(tmp_path) in msg and "--weights random" in msg
