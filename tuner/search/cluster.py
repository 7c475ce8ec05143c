"""Where a search runs on a Ray cluster: its nodes, their hardware classes, and the one class
a search is pinned to.

A *hardware class* is a set of nodes whose measurements may share one Pareto front:
* nodes started with the label `tuner.io/hardware=<name>` (`ray start --labels`), by name;
* any other node by its hardware fingerprint (`measure/hardware.py`), named `hw-<fingerprint>`.

A search takes one class (`search --hardware CLASS`; by default the driver's own) and Ray
places every trial, confirmation and ceiling probe on that class's nodes through a label
selector. Each trial reserves all CPUs of a node, so N nodes of the class run N trials at
once and no two trials share cores. Ray does the placing; nothing here schedules.

The fingerprint of a node counts the CPUs Ray gives a task there (its `num_cpus`), which is
what a trial can use, not what the operating system shows.

GPUs: a search on `cuda` reserves one GPU with each trial, confirmation and ceiling probe, and
Ray points `CUDA_VISIBLE_DEVICES` at it; a search on `cpu` reserves none (`choose_device`,
`HardwareClass.resources`). Ray 2.60 leaves a node's GPUs visible to a task that reserved none
(older Ray hid them), so the survey sees them without reserving any, and a `cpu` search tells
its trials the device (`TrialSettings.device`) rather than relying on them not seeing a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

from tuner.core.errors import ConfigError
from tuner.core.variant import DEVICES, Device
from tuner.measure.ceiling import CeilingEntry, entries_for
from tuner.measure.hardware import Hardware, detect

CLASS_LABEL = "tuner.io/hardware"  # the node label that names a class
NODE_ID_LABEL = "ray.io/node-id"  # set by Ray on every node
SURVEY_TIMEOUT_S = 120.0  # a node's first task imports torch


def node_name(node_id: str) -> str:
    """How progress lines, tags and columns name a node: host and the start of Ray's id (several
    Ray nodes can share one host)."""
    return f"{socket.gethostname()}:{node_id[:6]}"


def node_hardware(cpus: float) -> Hardware:
    """This process's machine, with the cores a task may use on it (at most `cpus`)."""
    hw = detect()
    return dataclasses.replace(hw, cores=max(1, min(hw.cores, int(cpus)))) if cpus else hw


@dataclass(frozen=True)
class Node:
    node_id: str
    name: str
    cpus: int
    hw: Hardware
    label: str  # the `tuner.io/hardware` label, or ""
    nice: int  # the niceness Ray's workers start at on this node
    gpus: int = 0  # the GPUs Ray schedules on this node

    @property
    def hardware_class(self) -> str:
        return self.label or f"hw-{self.hw.fingerprint}"


@dataclass(frozen=True)
class HardwareClass:
    name: str
    nodes: tuple[Node, ...]
    device: Device = Device.CPU  # where trials run (`choose_device`)

    @property
    def cores(self) -> int:
        """The CPUs each trial reserves: a whole node (the smallest, if sizes differ)."""
        return min(n.cpus for n in self.nodes)

    @property
    def hw(self) -> Hardware:
        """The hardware the class's measurements ran on: on `cpu`, its GPU is not part of it."""
        return dataclasses.replace(self.nodes[0].hw, cores=self.cores).for_device(self.device)

    @property
    def gpus(self) -> int:
        """The GPUs a trial reserves: one on `cuda`, none on `cpu`."""
        return 1 if self.device is Device.CUDA else 0

    def resources(self) -> dict[str, float]:
        """One trial's reservation: the whole node's CPUs, and its GPU on `cuda`."""
        return {"CPU": float(self.cores), **({"GPU": 1.0} if self.gpus else {})}

    @property
    def by_label(self) -> bool:
        return bool(self.nodes[0].label)

    def selector(self) -> dict[str, str]:
        """Ray label selector for the class's nodes. A labelled class also takes the nodes that
        join later with the same label."""
        if self.by_label:
            return {CLASS_LABEL: self.name}
        return {NODE_ID_LABEL: f"in({','.join(n.node_id for n in self.nodes)})"}

    def describe(self) -> str:
        hw, nodes = self.hw, ", ".join(n.name for n in self.nodes)
        return (
            f"{self.name}: {len(self.nodes)} node(s) of {self.cores} CPU(s), {hw.cpu_model}"
            f" ({hw.isa or 'no ISA flags'}), gpu {hw.gpu}; nodes {nodes}"
        )

    def tags(self) -> dict[str, str]:
        return {
            **self.hw.tags(),
            "tuner.hardware_class": self.name,
            "tuner.device": self.device,
            "tuner.hardware_nodes": ",".join(n.name for n in self.nodes),
        }


def _describe_node(node_id: str, cpus: float) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "name": node_name(node_id),
        "cpus": int(cpus),
        "hw": node_hardware(cpus),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }


def survey() -> list[Node]:
    """Every alive node with CPUs, described by a task that runs on it (Ray must be up). It
    reserves nothing, so a busy node is described all the same."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]
    gpus = {n["NodeID"]: int(n["Resources"].get("GPU", 0)) for n in alive}
    describe = ray.remote(_describe_node)
    pending = [
        describe.options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
        ).remote(n["NodeID"], n["Resources"]["CPU"])
        for n in alive
    ]
    done = ray.get(pending, timeout=SURVEY_TIMEOUT_S)
    labels = {n["NodeID"]: (n.get("Labels") or {}).get(CLASS_LABEL, "") for n in alive}
    return [Node(**d, label=labels[d["node_id"]], gpus=gpus[d["node_id"]]) for d in done]


def classes_of(nodes: list[Node]) -> dict[str, HardwareClass]:
    grouped: dict[str, list[Node]] = {}
    for n in nodes:
        grouped.setdefault(n.hardware_class, []).append(n)
    return {name: HardwareClass(name, tuple(sorted(ns, key=lambda n: n.name))) for name, ns in sorted(grouped.items())}


def choose_class(
    classes: dict[str, HardwareClass], wanted: str | None, driver_node: str, driver_hw: Hardware
) -> HardwareClass:
    """The class asked for; by default the driver's own: its node's class, or else the one
    class of the driver's CPU model and ISA. Anything else is a ConfigError listing the classes."""
    present = "\n".join(f"  {c.describe()}" for c in classes.values()) or "  (no node with CPUs)"
    if wanted is not None:
        if wanted in classes:
            return classes[wanted]
        raise ConfigError(
            f"--hardware {wanted}: no such hardware class on this Ray cluster. Classes present:\n{present}"
        )
    for c in classes.values():
        if any(n.node_id == driver_node for n in c.nodes):
            return c
    same = [c for c in classes.values() if (c.hw.cpu_model, c.hw.isa, c.hw.gpu) == (driver_hw.cpu_model, driver_hw.isa,
                                                                                     driver_hw.gpu)]  # fmt: skip
    if len(same) == 1:
        return same[0]
    raise ConfigError(
        "the Ray cluster has no node of this machine's hardware class; choose one with --hardware CLASS."
        f" Classes present:\n{present}"
    )


def choose_device(klass: HardwareClass, wanted: Device | str | None) -> HardwareClass:
    """The class with the device its trials run on: `wanted`, or by default `cuda` where its
    nodes have a GPU that torch can use, else `cpu`. `cuda` on a class without one is a
    ConfigError saying what Ray and torch report."""
    if wanted is not None and wanted not in DEVICES:
        raise ConfigError(f"--device {wanted}: must be one of {', '.join(DEVICES)}")
    usable = all(n.hw.gpu != "none" and n.gpus >= 1 for n in klass.nodes)
    device = Device(wanted) if wanted else Device.CUDA if usable else Device.CPU
    if device is Device.CUDA and not usable:
        hw = klass.nodes[0].hw
        found = ", ".join(f"{n.name}: {n.gpus} GPU(s) in Ray, torch sees {n.hw.gpu}" for n in klass.nodes)
        raise ConfigError(
            f"--device cuda: hardware class {klass.name} has no GPU that torch can use on every node ({found};"
            f" torch {hw.torch_version} built with CUDA {hw.cuda_version}). Use --device cpu, or a class with GPUs"
        )
    return dataclasses.replace(klass, device=device)


def niceness_warning(nodes: list[Node]) -> str | None:
    """One line when Ray's workers run niced (Ray's default is 15): trials then queue behind
    every daemon on the node and their timings suffer."""
    niced = [n for n in nodes if n.nice > 0]
    if not niced:
        return None
    return (
        f"warning: Ray's workers run at nice {max(n.nice for n in niced)} on {len(niced)} node(s)"
        f" ({', '.join(n.name for n in niced)}), so trials queue behind other processes there."
        " Start those nodes with `RAY_worker_niceness=0 ray start ...`."
    )


def ceiling_on(
    klass: HardwareClass, precisions: list[str] | None = None, remeasure: bool = False
) -> dict[str, CeilingEntry]:
    """The class's ceiling, measured (or read from the cache) on one of its nodes, with a whole
    node reserved like a trial's."""
    import ray

    task: Any = ray.remote(entries_for).options(
        num_cpus=klass.cores, num_gpus=klass.gpus, label_selector=klass.selector()
    )
    entries: dict[str, CeilingEntry] = ray.get(task.remote(klass.hw, precisions, remeasure))
    return entries


def place(wanted: str | None) -> tuple[HardwareClass, list[Node]]:
    """The class a search runs on (`choose_class`), and every node surveyed (Ray must be up)."""
    import ray

    nodes = survey()
    return choose_class(classes_of(nodes), wanted, ray.get_runtime_context().get_node_id(), detect()), nodes


def lost_nodes(klass: HardwareClass, wait_s: float = 30.0) -> list[Node]:
    """The class's nodes that Ray reports dead, waiting up to `wait_s` for its verdict: a trial's
    actor errors as soon as its node's socket closes, seconds before Ray's health checks mark
    the node dead."""
    import time

    import ray

    deadline = time.monotonic() + wait_s
    while True:
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        gone = [n for n in klass.nodes if n.node_id not in alive]
        if gone or time.monotonic() > deadline:
            return gone
        time.sleep(1.0)
