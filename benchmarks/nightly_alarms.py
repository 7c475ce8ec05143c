"""Does the nightly regression alarm cry wolf? Prints a table (not a test: nothing is asserted).

    python benchmarks/nightly_alarms.py                      # resnet50, >= 30 min
    python benchmarks/nightly_alarms.py --minutes 5 --checks 2 --model resnet18

It accepts one champion the way a nightly job does (the champion, the fp32 baseline and the
machine probe measured in the same interleaved rounds), then runs the nightly regression
check of that champion again and again on an unchanged tree, alternating:

  clean     nothing changed: every alarm is a false alarm;
  slowed    the champion alone runs `--slowdown` slower (the test-only `slow` fault with a
            factor, in the champion's own process): every check should alarm.

Each check is judged as `nightly` judges it (nightly/check.py: normalised figures, one
re-measure before a regression is called), and also the old way, on absolute p50 and
throughput (nightly/regression.py `judge`), to show what the relative judgement avoids.
Targets: 0 false alarms in 10 clean checks; 10 of 10 slowdowns detected.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from tuner.core.env import measurement_env, quiet_logs, service_env

INT8 = {"precision": "fp32", "quantization": "static_int8", "batch_size": 1, "compile": "torchscript",
        "layout": "contiguous"}  # fmt: skip  # what every resnet50 search recommends on these hosts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--minutes", type=float, default=30.0, help="run at least this long (default 30)")
    ap.add_argument("--checks", type=int, default=10, help="at least this many checks of each kind (default 10)")
    ap.add_argument("--slowdown", type=float, default=1.2, help="the champion's injected slowdown factor")
    ap.add_argument("--threshold", type=float, default=0.10, help="regression.threshold of the job (default 0.10)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per check (confirm.rounds)")
    args = ap.parse_args()
    service_env()
    measurement_env()
    quiet_logs()

    import ray

    from tuner.config.space import FaultRule, SearchSpace, resolve_space_file
    from tuner.core.variant import Variant
    from tuner.inputs.models import ModelSpec, resolve_weights
    from tuner.inputs.reference import reference_for
    from tuner.measure.ceiling import for_hardware
    from tuner.measure.hardware import detect
    from tuner.nightly.check import measure, run_check
    from tuner.nightly.regression import judge
    from tuner.search.cluster import place
    from tuner.search.confirm_ray import ray_confirm
    from tuner.trial.evaluate import TrialSettings

    cores = len(os.sched_getaffinity(0))
    space = SearchSpace.load(resolve_space_file(args.model, None))
    ref = reference_for(resolve_weights(ModelSpec(args.model, "auto", 0)), space.eval, None)
    hw = detect()
    champion = Variant.from_dict({**INT8, "threads": cores})
    settings = TrialSettings(space.timing, space.eval.screen_min_cosine, for_hardware(hw), timeout_s=600)
    slow = FaultRule(when=champion.to_dict(), action="slow", factor=args.slowdown)
    slowed = TrialSettings(space.timing, space.eval.screen_min_cosine, for_hardware(hw), timeout_s=600,
                           faults=(slow,))  # fmt: skip
    print(f"{args.model} on {hw.cpu_model} ({hw.isa}), {cores} cores; champion {champion.label}; "
          f"weights {ref.weights_label}; data {ref.data_label}")  # fmt: skip
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    klass, _ = place(None)
    rows = []
    try:
        clean_fn = ray_confirm(ref, settings, klass)
        slow_fn = ray_confirm(ref, slowed, klass)
        accepted_m = measure(clean_fn, champion, cores, args.rounds, ref.flops_per_item, cores)
        if accepted_m is None:
            raise SystemExit("the acceptance measurement failed")
        accepted = accepted_m.figures()
        print(f"accepted: p50 {accepted['p50_ms']:.2f} ms, speedup {accepted['speedup']:.2f}x "
              f"[{accepted['speedup_low']:.2f}, {accepted['speedup_high']:.2f}], "
              f"ceiling fraction {accepted.get('ceiling_fraction', float('nan')):.3f}")  # fmt: skip
        started, n = time.time(), 0
        while n < 2 * args.checks or time.time() - started < args.minutes * 60:
            kind = "clean" if n % 2 == 0 else "slowed"
            fn = clean_fn if kind == "clean" else slow_fn
            t0 = time.time()
            res = run_check(fn, champion, cores, args.rounds, ref.flops_per_item, accepted, args.threshold, 0.15)
            n += 1
            if res is None:
                print(f"check {n} ({kind}): measurement failed")
                continue
            absolute = judge(accepted, res.figures, args.threshold)
            speed, frac = (res.verdict.checks.get(name) for name in ("speedup", "ceiling_fraction"))
            drift = res.drift.text if res.drift else "-"
            rows.append((kind, res.verdict.regression, absolute.regression, res.remeasured))
            print(f"check {n:>2} {kind:<6} {time.time() - t0:5.0f} s  alarm {str(res.verdict.regression):<5} "
                  f"(absolute judgement: {str(absolute.regression):<5})  judged: {res.verdict.judged}  "
                  f"ceiling fraction {frac.change if frac else 0:+.1%}  speedup {speed.change if speed else 0:+.1%}  "
                  f"p50 {res.figures['p50_ms']:.2f} ms  {drift}"
                  + ("  [re-measured once]" if res.remeasured else ""), flush=True)  # fmt: skip
    finally:
        ray.shutdown()
    clean = [r for r in rows if r[0] == "clean"]
    slowed_rows = [r for r in rows if r[0] == "slowed"]
    print(f"\n{args.model}, {len(rows)} checks in {(time.time() - started) / 60:.1f} min, slowdown x{args.slowdown}")
    print("| checks | alarms (relative, as nightly judges) | alarms (absolute p50/throughput) | re-measured |")
    print("|---|---|---|---|")
    for name, rs in (("clean", clean), ("slowed", slowed_rows)):
        print(f"| {len(rs)} {name} | {sum(r[1] for r in rs)} | {sum(r[2] for r in rs)} | {sum(r[3] for r in rs)} |")
    print(
        f"false alarms: {sum(r[1] for r in clean)} of {len(clean)} (target 0); "
        f"slowdowns detected: {sum(r[1] for r in slowed_rows)} of {len(slowed_rows)} (target all)"
    )


if __name__ == "__main__":
    main()
