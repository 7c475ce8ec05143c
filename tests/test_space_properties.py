"""Property-based: any YAML document given to the space loader yields a valid space or a
SpaceError, never another exception (issue: bad input always gets a clear answer)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuner.config.space import SearchSpace
from tuner.core.errors import SpaceError
from tuner.search.choices import feasible_choices

SECTIONS = ["dimensions", "search", "constraints", "eval", "timing", "confirm"]
KEYS = [*SECTIONS, "precision", "quantization", "batch_size", "threads", "compile", "layout", "trials",
        "time_budget_minutes", "objective", "sampler", "max_accuracy_drop", "max_latency_ms", "max_memory_mb",
        "samples", "calibration_samples", "input_size", "screen_min_cosine", "warmup_min_iters", "window_s",
        "min_iters", "max_time_s", "stable_windows", "tolerance", "finalists", "rounds"]  # fmt: skip
VALUES = ["fp32", "bf16", "fp16", "none", "dynamic_int8", "static_int8", "eager", "torchscript", "inductor",
          "channels_last", "contiguous", "auto", "latency", "throughput", "tpe", "nsga2"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(VALUES),
    st.text(max_size=8),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-3, 3))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=25,
)
# Section-shaped documents reach the deeper validators more often than free-form ones.
shaped = st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), documents, max_size=4))

CPU = {"cores": 2, "device": "cpu", "fp16_native": False, "bf16_native": True}


def _load(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "space.yaml"
        p.write_text(text)
        try:
            space = SearchSpace.load(p)
            feasible_choices(space, **CPU)
        except SpaceError as e:
            assert str(p) in str(e)  # every error names the file


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, shaped))
def test_any_yaml_document_gives_a_space_or_a_space_error(doc):
    _load(yaml.safe_dump(doc))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_gives_a_space_or_a_space_error(text):
    _load(text)
