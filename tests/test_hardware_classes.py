"""Hardware classes (search/cluster.py) as pure logic: grouping, the default class, the errors
that list the classes, the niceness warning, the selector. The same code on a real multi-node
Ray cluster: tests/test_cluster.py."""

from __future__ import annotations

import dataclasses

import pytest

from tuner.core.errors import ConfigError
from tuner.measure.hardware import Hardware
from tuner.search.cluster import (
    CLASS_LABEL,
    NODE_ID_LABEL,
    Node,
    choose_class,
    choose_device,
    classes_of,
    niceness_warning,
)
from tuner.tracking.history import champion_alias

ZEN4 = Hardware("AMD EPYC 9R14", 4, "avx2,fma,avx512f,avx512_vnni,avx512_bf16", "none", "2.14.1", "none", "3.11")
ZEN3 = Hardware("AMD EPYC 7R13", 4, "avx2,fma", "none", "2.14.1", "none", "3.11")


def node(i: int, hw: Hardware, label: str = "", nice: int = 0, cpus: int = 4) -> Node:
    return Node(
        f"{i:02d}" * 28, f"host{i}:{i:02d}{i:02d}{i:02d}", cpus, dataclasses.replace(hw, cores=cpus), label, nice
    )


def test_nodes_group_by_label_else_by_fingerprint():
    nodes = [node(1, ZEN4), node(2, ZEN4), node(3, ZEN3), node(4, ZEN4, "fast"), node(5, ZEN3, "fast")]
    classes = classes_of(nodes)
    assert set(classes) == {f"hw-{dataclasses.replace(ZEN4).fingerprint}", f"hw-{ZEN3.fingerprint}", "fast"}
    fp4 = classes[f"hw-{ZEN4.fingerprint}"]
    assert [n.name for n in fp4.nodes] == ["host1:010101", "host2:020202"] and fp4.cores == 4
    assert fp4.selector() == {NODE_ID_LABEL: f"in({'01' * 28},{'02' * 28})"}
    assert classes["fast"].selector() == {CLASS_LABEL: "fast"}  # also takes labelled nodes that join later
    tags = fp4.tags()
    assert tags["tuner.hardware_class"] == fp4.name and tags["hw.fingerprint"] == ZEN4.fingerprint


def test_a_class_reserves_its_smallest_node_and_a_different_size_is_another_class():
    small = node(2, ZEN4, cpus=2)
    assert small.hw.fingerprint != node(1, ZEN4).hw.fingerprint  # the CPUs Ray gives count
    labelled = classes_of([node(1, ZEN4, "x"), node(2, ZEN4, "x", cpus=2)])["x"]
    assert labelled.cores == 2 and labelled.hw.cores == 2


def test_the_default_is_the_drivers_node_class_else_its_cpu_else_an_error_listing_the_classes():
    nodes = [node(1, ZEN4, "a"), node(2, ZEN3, "b")]
    classes = classes_of(nodes)
    assert choose_class(classes, None, nodes[1].node_id, ZEN4).name == "b"  # the driver's node decides
    assert choose_class(classes, None, "head", ZEN3).name == "b"  # a head without CPUs: the driver's CPU
    assert choose_class(classes, "a", "head", ZEN3).name == "a"
    with pytest.raises(ConfigError, match="choose one with --hardware CLASS") as e:
        choose_class(classes_of([node(1, ZEN4, "a"), node(2, ZEN4, "b")]), None, "head", ZEN4)
    assert "a: 1 node(s) of 4 CPU(s), AMD EPYC 9R14" in str(e.value) and "\n  b: " in str(e.value)
    with pytest.raises(ConfigError, match="--hardware c: no such hardware class"):
        choose_class(classes, "c", "head", ZEN4)


def test_niced_workers_get_one_warning_naming_the_nodes_and_the_fix():
    assert niceness_warning([node(1, ZEN4)]) is None
    text = niceness_warning([node(1, ZEN4), node(2, ZEN4, nice=15)])
    assert text is not None and "nice 15 on 1 node(s) (host2:020202)" in text
    assert "RAY_worker_niceness=0 ray start" in text


def test_champion_alias_per_class():
    assert champion_alias(None) == "champion" and champion_alias("zen4") == "champion-zen4"
    assert champion_alias("gpu.a100") == "champion-gpu-a100"  # registry aliases take no dots


def test_nightly_history_is_the_class_s_when_a_class_is_named_else_the_fingerprint_s(tmp_path, monkeypatch):
    """tracking/history.previous_run on a real sqlite MLflow store: three finished nightly
    searches (class a, class b, no class), each with a champion."""
    from tuner.tracking.history import previous_run
    from tuner.tracking.store import Tracker

    monkeypatch.chdir(tmp_path)  # a local store's artifacts go to ./mlartifacts
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tuner/m")
    ids = {}
    for name, tags in (
        ("a", {"tuner.hardware_class": "a", "hw.fingerprint": "f00000000001"}),
        ("b", {"tuner.hardware_class": "b", "hw.fingerprint": "f00000000001"}),  # same machine type, own class
        ("here", {"hw.fingerprint": "f00000000002"}),  # a search before classes, or on one machine
    ):
        ids[name] = tracker.start_parent(name, {}, {**tags, "tuner.nightly": "true", "tuner.champion_variant": "{}"})
        tracker.finish(ids[name])
    assert previous_run(tracker, "f00000000002", "a").info.run_id == ids["a"]
    assert previous_run(tracker, "f00000000002", "b").info.run_id == ids["b"]
    assert previous_run(tracker, "f00000000002").info.run_id == ids["here"]
    assert previous_run(tracker, "f00000000002", "c") is None


def test_an_experiment_created_by_another_process_meanwhile_is_taken_not_an_error(tmp_path, monkeypatch):
    """Two hardware classes of a nightly job start the same model's search at once: both find
    no experiment, both create it; the second must take the first one's (a real sqlite store)."""
    from mlflow.tracking import MlflowClient

    from tuner.tracking.store import Tracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "tuner/first")
    other = MlflowClient(uri).create_experiment("tuner/m")  # the other process, between lookup and create
    assert tracker._create_experiment("tuner/m", uri) == other


H100 = dataclasses.replace(ZEN4, gpu="NVIDIA H100 80GB HBM3", cuda_version="12.8", gpu_driver="570.86",
                           cudnn_version="91000")  # fmt: skip


def test_a_machine_without_a_gpu_keeps_its_fingerprint_and_a_gpu_s_driver_and_cudnn_count():
    import hashlib

    key = f"{ZEN4.cpu_model}|{ZEN4.cores}|{ZEN4.isa}|none|{ZEN4.torch_version}"
    assert ZEN4.fingerprint == hashlib.sha256(key.encode()).hexdigest()[:12]  # the id history is keyed by
    assert H100.fingerprint != dataclasses.replace(H100, gpu_driver="550.54").fingerprint
    assert H100.fingerprint != dataclasses.replace(H100, cudnn_version="90100").fingerprint
    assert H100.without_gpu().fingerprint == ZEN4.fingerprint  # --device cpu on it: its CPU's history
    assert H100.for_device("cpu") == H100.without_gpu() and H100.for_device("cuda") == H100 == H100.for_device(None)
    assert H100.tags()["hw.gpu_driver"] == "570.86" and ZEN4.tags()["hw.cudnn_version"] == "none"
    assert H100.bf16_native and dataclasses.replace(H100, gpu_capability="9.0").bf16_native
    assert not dataclasses.replace(H100, gpu_capability="7.5").bf16_native  # a T4: no bf16 kernels


def test_the_device_is_cuda_where_every_node_has_a_gpu_torch_sees_else_cpu():
    gpu_class = classes_of([dataclasses.replace(node(1, H100, "g"), gpus=1)])["g"]
    chosen = choose_device(gpu_class, None)
    assert chosen.device == "cuda" and chosen.resources() == {"CPU": 4.0, "GPU": 1.0}
    assert chosen.hw.gpu == H100.gpu and chosen.tags()["tuner.device"] == "cuda"
    on_cpu = choose_device(gpu_class, "cpu")  # no GPU reserved, so Ray hides it from the trials
    assert on_cpu.resources() == {"CPU": 4.0} and on_cpu.gpus == 0
    assert on_cpu.hw.gpu == "none" and on_cpu.hw.fingerprint == ZEN4.fingerprint
    cpu_class = classes_of([node(1, ZEN4, "c")])["c"]
    assert choose_device(cpu_class, None).device == "cpu"
    with pytest.raises(ConfigError, match="--device cuda: hardware class c has no GPU that torch can use") as e:
        choose_device(cpu_class, "cuda")
    assert "host1:010101: 0 GPU(s) in Ray, torch sees none" in str(e.value) and "built with CUDA none" in str(e.value)
    # Ray schedules a GPU there but torch does not see it (no driver): not usable either.
    with pytest.raises(ConfigError, match="1 GPU\\(s\\) in Ray, torch sees none"):
        choose_device(classes_of([dataclasses.replace(node(1, ZEN4, "c"), gpus=1)])["c"], "cuda")
    with pytest.raises(ConfigError, match="--device tpu: must be one of cuda, cpu"):
        choose_device(cpu_class, "tpu")
