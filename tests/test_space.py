"""Space-file validation and the Optuna define-by-run space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuner.build import infeasible
from tuner.config.space import SPACES_DIR, SearchSpace, resolve_space_file
from tuner.core.errors import SpaceError
from tuner.core.variant import CompileMode, Quantization, variant_from_config
from tuner.search.choices import baseline_point, define_by_run, feasible, feasible_choices
from tuner.search.sampling import initial_points

CPU = {"cores": 2, "device": "cpu", "fp16_native": False, "bf16_native": True}


def load_text(tmp_path: Path, text: str) -> SearchSpace:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return SearchSpace.load(p)


@pytest.mark.parametrize("f", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_space_files_are_valid(f):
    feasible_choices(SearchSpace.load(f), **CPU)


def test_resnet50_space_has_every_dimension_of_the_issue():
    d = SearchSpace.load(SPACES_DIR / "resnet50.yaml").dimensions
    assert {p.value for p in d.precision} == {"fp32", "tf32", "bf16", "fp16"}  # tf32: a GPU only
    assert {q.value for q in d.quantization} == {"none", "dynamic_int8", "static_int8"}
    assert d.batch_size == [1, 2, 4, 8, 16, 32]
    assert d.threads == "auto"
    assert {c.value for c in d.compile} == {c.value for c in CompileMode}  # every runtime
    assert {x.value for x in d.layout} == {"contiguous", "channels_last"}


def test_space_file_lookup(tmp_path):
    assert resolve_space_file("resnet50", None).name == "resnet50.yaml"
    assert resolve_space_file("resnet18", None).name == "default.yaml"
    assert resolve_space_file("resnet50", tmp_path / "x.yaml") == tmp_path / "x.yaml"


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("dimensions: {batch_size: [0, 2]}", "dimensions.batch_size", ">= 1"),
        ("dimensions: {batch_size: []}", "dimensions.batch_size", "at least 1"),
        ("dimensions: {precision: [fp8]}", "dimensions.precision[0]", "fp32"),
        ("dimensions: {bogus: [1]}", "dimensions.bogus", "unknown key"),
        ("search: {trials: many}", "search.trials", "integer"),
        ("search: {objective: memory}", "search.objective", "latency"),
        ("timing: {tolerance: -1}", "timing.tolerance", "greater than 0"),
        ("timing: {load_sample_s: 0}", "timing.load_sample_s", "greater than 0"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path, text, key, fragment):
    with pytest.raises(SpaceError) as e:
        load_text(tmp_path, text)
    msg = str(e.value)
    assert "s.yaml" in msg and f"`{key}`" in msg and fragment in msg


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_text(tmp_path, "dimensions: [unclosed")
    with pytest.raises(SpaceError, match="not found"):
        SearchSpace.load(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="mapping"):
        load_text(tmp_path, "- a list")


def test_threads_above_the_cores_are_rejected(tmp_path):
    sp = load_text(tmp_path, "dimensions: {threads: [1, 4]}")
    with pytest.raises(SpaceError, match=r"`dimensions.threads` lists \[4\].*at most 2"):
        feasible_choices(sp, **CPU)


def test_auto_threads_and_hardware_filtering():
    ch = feasible_choices(SearchSpace(), **CPU)
    assert ch["threads"] == [1, 2]
    assert "fp16" not in ch["precision"]  # not native on this CPU profile
    cpu_compiles = {c.value for c in CompileMode} - {"inductor_reduce_overhead"}  # CUDA graphs: a GPU only
    assert set(ch["compile_int8"]) == cpu_compiles  # every CPU runtime has int8
    assert set(ch["compile"]) == cpu_compiles
    gpu = feasible_choices(SearchSpace(), cores=8, device="cuda", fp16_native=True, bf16_native=True)
    assert "fp16" in gpu["precision"] and gpu["quantization"] == ["none"]
    assert gpu["batch_size"] == [1, 8, 32, 64, 128, 256] and ch["batch_size"] == [1, 2, 4, 8, 16, 32]  # batch_size_gpu
    assert set(gpu["compile"]) == {"eager", "torchscript", "inductor", "inductor_max_autotune",
                                   "inductor_reduce_overhead"}  # the CPU runtimes go  # fmt: skip


def test_baseline_values_are_always_in_the_space(tmp_path):
    sp = load_text(tmp_path, "dimensions: {precision: [bf16], batch_size: [8], compile: [inductor], threads: [1]}")
    ch = feasible_choices(sp, **CPU)
    assert ch["precision"] == ["fp32", "bf16"] and ch["batch_size"] == [1, 8] and ch["compile"] == ["eager", "inductor"]
    assert baseline_point(ch)["threads"] == 1


def test_initial_points_are_baseline_then_feasible_probes():
    choices = feasible_choices(SearchSpace(), **CPU)
    points = initial_points(choices, trials=16)
    labels = [variant_from_config(p).label for p in points]
    assert labels[0] == "fp32 bs1 t2 eager nchw"
    # one int8 config per runtime family, right after the baseline
    assert labels[1:5] == ["int8-static bs1 t2 torchscript nchw", "int8-static+bf16 bs1 t2 ov nchw",
                           "int8-static bs1 t2 inductor nchw", "int8-static bs1 t2 ort nchw"]  # fmt: skip
    assert len(points) <= 1 + 16 // 3
    assert "bf16 bs1 t2 inductor cl" in [variant_from_config(p).label for p in initial_points(choices, trials=24)]
    tput = [variant_from_config(p).label for p in initial_points(choices, trials=24, objective="throughput")]
    assert tput[1:6] == ["int8-static bs1 t2 torchscript nchw", "int8-static+bf16 bs8 t2 ov nchw",
                         "int8-static+bf16 bs16 t2 ov-tput nchw", "fp32 bs8 t2 ort nchw",
                         "int8-static+bf16 bs1 t2 ov nchw"]  # fmt: skip
    # a 16-trial throughput search still reaches the fp32 ONNX Runtime batch probe
    assert "fp32 bs8 t2 ort nchw" in [variant_from_config(p).label
                                      for p in initial_points(choices, trials=16, objective="throughput")]  # fmt: skip
    assert initial_points(choices, trials=2) == [baseline_point(choices)]
    no_bf16 = feasible_choices(SearchSpace(), cores=2, device="cpu", fp16_native=False, bf16_native=False)
    no_bf16_points = initial_points(no_bf16, trials=40)
    assert all(variant_from_config(p).precision.value != "bf16" for p in no_bf16_points)
    assert "int8-static bs1 t2 ov nchw" in [variant_from_config(p).label for p in no_bf16_points]  # fp32 instead
    # On a GPU: no int8 and no CPU runtime, and the CUDA-graph probe comes early
    gpu = feasible_choices(SearchSpace(), cores=8, device="cuda", fp16_native=True, bf16_native=True)
    gpu_labels = [variant_from_config(p).label for p in initial_points(gpu, trials=24)]
    assert gpu_labels[0] == "fp32 bs1 t8 eager nchw" and "fp16 bs1 t8 inductor-ro cl" in gpu_labels
    assert not any("int8" in label or " ov" in label or " ort" in label for label in gpu_labels)
    assert not any("inductor-ro" in variant_from_config(p).label for p in initial_points(choices, trials=40))


def test_overrides_are_validated():
    sp = SearchSpace().with_overrides(search={"trials": 3, "objective": None})
    assert sp.search.trials == 3 and sp.search.objective == "latency"
    with pytest.raises(SpaceError, match=r"command-line flags(.|\n)*`--trials` \(search.trials\)"):
        SearchSpace().with_overrides(search={"trials": 0})


def test_optuna_samples_only_feasible_variants():
    """Drive the real define-by-run function with a real Optuna study: every sampled
    config is a valid Variant that the feasibility rules accept."""
    choices = feasible_choices(SearchSpace(), **CPU)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(baseline_point(choices))
    seen = []
    for _ in range(200):
        t = study.ask()
        const = define_by_run(t, choices) or {}
        v = variant_from_config({**t.params, **const})
        assert feasible({**t.params, **const}), v  # the conditional space offers no impossible pair
        assert infeasible(v, fp16_native=False, bf16_native=True) is None, v
        seen.append(v)
        study.tell(t, [1.0, 1.0])
    assert seen[0].label == "fp32 bs1 t2 eager nchw"  # the enqueued baseline comes first
    cpu_runtimes = {c.value for c in CompileMode} - {"inductor_reduce_overhead"}  # CUDA graphs: a GPU only
    assert {v.compile.value for v in seen} == cpu_runtimes  # every runtime this CPU runs is drawn
    assert any(v.quantization is Quantization.STATIC_INT8 for v in seen)
    assert any(v.precision.value == "bf16" for v in seen)


def test_a_bad_serving_image_size_is_an_error_that_names_the_flag():
    space = SearchSpace()
    assert space.with_overrides(serving={"image_size": "1920x1080"}).serving.image_size == "1920x1080"
    with pytest.raises(SpaceError) as e:
        space.with_overrides(serving={"image_size": "10x10"})
    assert "--image-size" in str(e.value) and "WIDTHxHEIGHT" in str(e.value), str(e.value)
