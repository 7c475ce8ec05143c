"""Confirmation measurements on Ray (the `ConfirmFn` that `decide.finalists.confirm_finalists` calls):
one Ray actor holding all CPUs of a node of the search's hardware class, one fresh forked
process per measurement (trial/process.py), in the interleaved A B C A B C order of
`confirm.interleaved`. Each measurement names the node and fingerprint that took it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tuner.core.console import say
from tuner.core.errors import last_line
from tuner.core.variant import MachineProbe
from tuner.decide.confirm import interleaved
from tuner.decide.finalists import ConfirmFn, Measurable
from tuner.inputs.reference import Reference
from tuner.search.cluster import HardwareClass, node_hardware, node_name
from tuner.trial.evaluate import TrialSettings, time_probe, time_variant
from tuner.trial.process import fresh_process


def ray_confirm(ref: Reference, settings: TrialSettings, klass: HardwareClass) -> ConfirmFn:
    """Confirmation measurements, run one after another in A B C A B C order, on a whole node
    of `klass` each. One Ray actor per confirmation run; each measurement is a fresh process forked
    from it (trial/process.py), with the trials' time and memory limits."""
    import ray

    ref_handle = ray.put(ref)

    @ray.remote
    class _Confirmer:
        def time(self, item: Measurable, ref: Reference, settings: TrialSettings) -> dict[str, Any]:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="tuner-confirm-") as folder:
                if isinstance(item, MachineProbe):
                    res = fresh_process(time_probe, (item, settings), folder, settings.timeout_s, settings.memory_mb)
                else:
                    args = (item, ref, settings)
                    res = fresh_process(time_variant, args, folder, settings.timeout_s, settings.memory_mb)
            node_id = ray.get_runtime_context().get_node_id()
            return {**res, "node": node_name(node_id), "node_fingerprint": node_hardware(klass.cores).fingerprint}

    def run(variants: Sequence[Measurable], rounds: int) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(variants))}
        schedule = interleaved(variants, rounds)
        actor = _Confirmer.options(  # type: ignore[attr-defined]
            num_cpus=klass.cores, num_gpus=klass.gpus, label_selector=klass.selector()
        ).remote()
        try:
            for n, (r, i) in enumerate(schedule, 1):
                try:
                    res = ray.get(actor.time.remote(variants[i], ref_handle, settings))
                except ray.exceptions.RayError as e:
                    res = {"error": last_line(str(e))}
                if "times_s" not in res:
                    say(f"  confirm {n}/{len(schedule)} {variants[i].label}: failed ({str(res.get('error'))[:100]})")
                    continue
                out[i].append({**res, "round": r})
                p50 = float(np.median(res["times_s"])) * 1e3
                say(
                    f"  confirm {n:>2}/{len(schedule)} round {r + 1} {variants[i].label:<38} p50 {p50:8.1f} ms"
                    f"  on {res['node']}"
                )
        finally:
            ray.kill(actor)  # frees the node's CPUs for Tune (the nightly check runs before the search)
        return out

    return run
