"""Pareto plots for reviewers (artifacts of the parent run, docs/mlflow.md):

- `pareto.html`: interactive plotly, with plotly.js embedded (works offline, no CDN);
- `pareto.png`: the same two panels rendered with matplotlib.

Two panels: p90 latency against throughput, and p90 latency against quality. Each ok trial
is a point coloured by compile mode, shaped by precision/quantization. The Pareto front
(over latency, throughput and quality together, so not a line in either panel) is ringed;
the baseline and the recommendation are labelled; hovering a point in the HTML gives its
config and figures. Trials that are not ok have no figures to plot; the subtitle counts them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tuner.core.schema import TrialStatus

PANELS = (
    ("throughput_ips", "throughput (items/s)"),
    ("quality", "quality (top-1, or top-1 agreement with fp32)"),
)
KINDS = {  # precision/quantization -> marker (plotly name, matplotlib code)
    "fp32": ("circle", "o"),
    "bf16": ("diamond", "D"),
    "fp16": ("square", "s"),
    "int8-dynamic": ("triangle-up", "^"),
    "int8-static": ("star", "*"),
}
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _kind(row: pd.Series) -> str:
    q = str(row["quantization"])
    return {"dynamic_int8": "int8-dynamic", "static_int8": "int8-static"}.get(q, str(row["precision"]))


def _prepare(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    ok = df[df["status"].eq(TrialStatus.OK)].copy()
    ok["kind"] = ok.apply(_kind, axis=1)
    for col in ("pareto", "recommended", "is_baseline"):
        ok[col] = ok[col].fillna(False).astype(bool) if col in ok else False
    not_ok = len(df) - len(ok)
    note = f"{len(ok)} ok trial(s)" + (f"; {not_ok} not ok (failed/timeout/oom/...), not plotted" if not_ok else "")
    return ok, note


def _hover(r: pd.Series) -> str:
    return (
        f"<b>{r['label']}</b><br>p50 {r['latency_p50_ms']:.2f} ms, p90 {r['latency_p90_ms']:.2f} ms"
        f"<br>{r['throughput_ips']:.1f} items/s<br>quality {r['quality']:.3f}"
        + (" (Pareto)" if r["pareto"] else "")
        + (" <b>RECOMMENDED</b>" if r["recommended"] else "")
        + (" (baseline)" if r["is_baseline"] else "")
    )


def write_html(df: pd.DataFrame, path: Path, title: str) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ok, note = _prepare(df)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"p90 latency vs {label}" for _, label in PANELS])
    modes = sorted(ok["compile"].unique())
    for col, (metric, label) in enumerate(PANELS, start=1):
        for i, mode in enumerate(modes):
            sub = ok[ok["compile"].eq(mode)]
            fig.add_trace(
                go.Scatter(
                    x=sub["latency_p90_ms"],
                    y=sub[metric],
                    mode="markers",
                    name=str(mode),
                    legendgroup=str(mode),
                    showlegend=col == 1,
                    marker={
                        "color": COLOURS[i % len(COLOURS)],
                        "size": 11,
                        "symbol": [KINDS.get(k, ("circle", "o"))[0] for k in sub["kind"]],
                    },
                    text=[_hover(r) for _, r in sub.iterrows()],
                    hovertemplate="%{text}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        front = ok[ok["pareto"]].sort_values("latency_p90_ms")
        fig.add_trace(
            go.Scatter(
                x=front["latency_p90_ms"],
                y=front[metric],
                mode="markers",
                name="Pareto front",
                legendgroup="front",
                showlegend=col == 1,
                marker={"size": 18, "symbol": "circle-open", "color": "black"},
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
        for flag, text, ay in (("is_baseline", "baseline", 40), ("recommended", "recommended", -40)):
            for _, r in ok[ok[flag]].iterrows():
                fig.add_annotation(
                    x=math.log10(r["latency_p90_ms"]), y=r[metric], text=f"{text}: {r['label']}",
                    row=1, col=col, arrowhead=2, ay=ay,
                )  # fmt: skip
        fig.update_xaxes(title_text="p90 latency (ms, log scale)", type="log", row=1, col=col)
        fig.update_yaxes(title_text=label, row=1, col=col)
    fig.update_layout(
        title=f"{title}<br><sup>{note}; colour: compile mode; marker: "
        + ", ".join(f"{k} {v[0]}" for k, v in KINDS.items())
        + "</sup>",
        height=600,
        width=1400,
        legend_title_text="compile mode",
    )
    fig.write_html(path, include_plotlyjs=True, full_html=True)  # embedded plotly.js: works offline
    return path


def write_png(df: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ok, note = _prepare(df)
    modes = sorted(ok["compile"].unique())
    colour = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(modes)}
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, (metric, label) in zip(axes, PANELS, strict=True):
        for kind, (_, marker) in KINDS.items():
            sub = ok[ok["kind"].eq(kind)]
            ax.scatter(sub["latency_p90_ms"], sub[metric], c=[colour[m] for m in sub["compile"]], marker=marker, s=60)
        front = ok[ok["pareto"]].sort_values("latency_p90_ms")
        ax.plot(front["latency_p90_ms"], front[metric], "ko", mfc="none", ms=14, ls="", label="Pareto front")
        for flag, text, dy in (("is_baseline", "baseline", -22), ("recommended", "recommended", 14)):
            for _, r in ok[ok[flag]].iterrows():
                ax.annotate(
                    f"{text}: {r['label']}",
                    (r["latency_p90_ms"], r[metric]),
                    xytext=(10, dy),
                    textcoords="offset points",
                    fontsize=8,
                    arrowprops={"arrowstyle": "->"},
                )
        ax.set_xscale("log")
        ax.set_xlabel("p90 latency (ms, log scale)")
        ax.set_ylabel(label)
        ax.set_title(f"p90 latency vs {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[m], marker="o", ls="", label=str(m)) for m in modes]
    handles += [Line2D([], [], color="grey", marker=v[1], ls="", label=k) for k, v in KINDS.items()]
    handles += [Line2D([], [], color="k", ls="", marker="o", mfc="none", ms=12, label="Pareto front")]
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.suptitle(f"{title}\n{note}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(df: pd.DataFrame, out: Path, title: str) -> list[str]:
    """Both plots into `out`; returns the file names written."""
    write_html(df, out / "pareto.html", title)
    write_png(df, out / "pareto.png", title)
    return ["pareto.html", "pareto.png"]
