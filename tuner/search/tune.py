"""Ray Tune wiring: the trainable, the callback that records each finished trial in the
driver, the sampler, and the `Tuner` itself. Ray does all scheduling; nothing here decides
where or when a trial runs beyond what Tune is asked for: all CPUs of a node of the search's
hardware class per trial (search/cluster.py), so as many trials at once as the class has nodes.

The Tune actor is reused from trial to trial (`reuse_actors=True`); each trial runs in a
fresh process forked from that actor's forkserver (trial/process.py), so a trial costs
about 50 ms of process start instead of the 3 s a new actor costs.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.core.errors import last_line
from tuner.core.schema import PENALTY, SAMPLER_OBJECTIVES, TrialResult, TrialStatus
from tuner.core.variant import Variant, config_key, variant_from_config
from tuner.inputs.reference import Reference
from tuner.search.cluster import HardwareClass, lost_nodes, node_hardware, node_name
from tuner.trial.evaluate import TrialSettings, evaluate
from tuner.trial.faults import inject
from tuner.trial.process import classify, fresh_process

if TYPE_CHECKING:
    from tuner.search.sampling import DedupOptunaSearch
    from tuner.search.stopping import Interrupt
    from tuner.tracking.recorder import TrialRecorder


# How Ray words a trial whose actor went away: its node may have died (the raylet, or the
# whole machine), which `cluster.lost_nodes` then confirms.
ACTOR_GONE = re.compile(
    r"ActorDiedError|ActorUnavailableError|actor .{0,80}(unavailable|died)|RpcError|node (has )?died|NodeDiedError",
    re.I,
)


def run_trial(config: dict[str, Any], reference: Reference, settings: TrialSettings) -> None:
    """The Ray Tune function trainable (wrapped with `tune.with_parameters`): one trial in a
    fresh process, which also turns crashes, hangs and memory blow-ups into results."""
    import ray
    from ray import tune

    started = time.perf_counter()
    variant = variant_from_config(config)
    out = fresh_process(
        _trial_body,
        (variant, reference, settings),
        tune.get_context().get_trial_dir(),
        settings.timeout_s,
        settings.memory_mb,
    )
    result = TrialResult.from_report(out)  # the process raised or died: a result all the same
    result.trial_wall_s = time.perf_counter() - started
    result.node = node_name(ray.get_runtime_context().get_node_id())
    result.node_fingerprint = node_hardware(settings.cores).fingerprint
    tune.report(result.report())


def _trial_body(variant: Variant, reference: Reference, settings: TrialSettings) -> dict[str, Any]:
    """What a trial's fresh process runs."""
    inject(list(settings.faults), variant.to_dict())
    return evaluate(variant, reference, settings).to_dict()


def as_callback(recorder: TrialRecorder, klass: HardwareClass) -> Any:
    """The recorder as a Tune callback (the recorder itself stays free of Ray types). A trial
    whose node died is `failed` with "node lost"; Tune goes on with the nodes that remain."""
    from ray.tune import Callback

    class _Cb(Callback):
        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            recorder.start(trial.trial_id)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            if trial.last_result and "status" in trial.last_result:
                recorder.record(trial.trial_id, trial.config, TrialResult.from_report(trial.last_result))

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            # The trial raised, or its process died (crash, or the watchdog's timeout/oom kill).
            err = ""
            if trial.error_file and Path(trial.error_file).exists():
                err = Path(trial.error_file).read_text()
            died = classify(trial.local_path, err or "trial errored")
            gone = lost_nodes(klass) if ACTOR_GONE.search(err) else []
            if gone:  # not the config's fault: say so, and where
                names = ", ".join(n.name for n in gone)
                died = {
                    **died,
                    "status": TrialStatus.FAILED,
                    "node": names,
                    "error": f"node lost ({names}): {last_line(err)}",
                }
            recorder.record(trial.trial_id, trial.config, TrialResult.from_report(died))

    return _Cb()


def searcher(
    choices: dict[str, list[Any]],
    points: list[dict[str, Any]],
    sampler_name: str,
    trials: int,
    seed: int,
    output: Path,
) -> DedupOptunaSearch:
    """OptunaSearch over the define-by-run space, multi-objective, persisted in the output
    folder (`optuna.db`) so that `--resume` continues the same study."""
    import optuna

    from tuner.search.choices import all_points, feasible, space_function
    from tuner.search.sampling import DedupOptunaSearch

    # TPE's `group` is experimental; it is what conditional spaces need (the driver only).
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Optuna logs "A new study created" at INFO between our progress lines; ours say more.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (
        optuna.samplers.NSGAIISampler(seed=seed)
        if sampler_name == "nsga2"
        # multivariate + group: TPE's mode for conditional (define-by-run) spaces; about half
        # the budget is random start-up so that every compile mode and precision gets seen.
        else optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(2, trials // 2)), multivariate=True, group=True
        )
    )
    return DedupOptunaSearch(
        key=config_key,
        space=space_function(choices),
        metric=list(SAMPLER_OBJECTIVES),
        mode=list(SAMPLER_OBJECTIVES.values()),
        points_to_evaluate=points,
        penalty=PENALTY,
        candidates=all_points(choices),
        feasible=feasible,
        sampler=sampler,
        study_name=f"tuner-{output.name}",
        storage=optuna.storages.RDBStorage(f"sqlite:///{output.resolve() / 'optuna.db'}"),
    )


def fit(
    ref: Reference,
    settings: TrialSettings,
    klass: HardwareClass,
    search_alg: DedupOptunaSearch,
    trials: int,
    budget_s: float | None,
    output: Path,
    recorder: TrialRecorder,
    interrupt: Interrupt,
) -> None:
    """Run `trials` trials on the nodes of `klass`, each reserving a whole node, so one at a time
    per node; returns when they are done, the time budget is spent, or `interrupt` stopped Tune."""
    from ray import tune

    whole_node = tune.PlacementGroupFactory(
        [klass.resources()], strategy="PACK", bundle_label_selector=[klass.selector()]
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, reference=ref, settings=settings), whole_node)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            num_samples=trials,
            max_concurrent_trials=len(klass.nodes),
            reuse_actors=True,  # trials still get a fresh process each (trial/process.py)
            time_budget_s=budget_s,
        ),
        run_config=tune.RunConfig(
            name=f"ray-{int(time.time())}",  # a fresh Tune experiment per (resumed) run
            storage_path=str(output.resolve()),
            verbose=0,
            callbacks=[as_callback(recorder, klass)],
            stop=interrupt.stopper(),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    with interrupt:
        tuner.fit()
