"""PNG figures of a benchmark: reference vs hypothesis timelines, and DER against latency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timeline_png(path: Path, reference: Any, hypothesis: Any, uem: Any, duration: float, title: str) -> Path:
    """Two panels, one lane per speaker: the reference, then the hypothesis coloured by the
    reference speaker it maps to (optimal DER mapping; unmapped speakers in grey tones).
    Unscored regions (outside the UEM) are shaded."""
    from pyannote.core import Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    plt = _pyplot()
    palette = plt.get_cmap("tab10").colors
    ref_labels = sorted(reference.labels(), key=str)
    colors = {label: palette[i % len(palette)] for i, label in enumerate(ref_labels)}
    mapping = DiarizationErrorRate().optimal_mapping(reference, hypothesis) if len(hypothesis) else {}
    hyp_labels = sorted(hypothesis.labels(), key=lambda h: (str(mapping.get(h, "~")), str(h)))
    greys = ["0.35", "0.55", "0.7", "0.45", "0.6"]
    hyp_colors = {h: colors.get(mapping.get(h), greys[i % len(greys)]) for i, h in enumerate(hyp_labels)}

    rows = max(1, len(ref_labels)) + max(1, len(hyp_labels))
    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(12, 1.2 + 0.32 * rows),
                             gridspec_kw={"height_ratios": [max(1, len(ref_labels)), max(1, len(hyp_labels))]})
    for ax, annotation, labels, cmap, name in (
        (axes[0], reference, ref_labels, colors, "reference"),
        (axes[1], hypothesis, hyp_labels, hyp_colors, "hypothesis"),
    ):
        lane = {label: i for i, label in enumerate(labels)}
        for segment, _, label in annotation.itertracks(yield_label=True):
            ax.broken_barh([(segment.start, segment.duration)], (lane[label] + 0.1, 0.8), color=cmap[label])
        ax.set_yticks([i + 0.5 for i in range(len(labels))])
        ax.set_yticklabels([str(label) + (f" → {mapping[label]}" if name == "hypothesis" and label in mapping else "")
                            for label in labels], fontsize=8)
        ax.set_ylim(0, max(1, len(labels)))
        ax.set_ylabel(name, fontsize=9)
        gaps = uem.gaps(support=Segment(0.0, duration)) if uem is not None else []
        for gap in gaps:
            ax.axvspan(gap.start, gap.end, color="0.9", zorder=0)
        ax.grid(axis="x", alpha=0.3)
    axes[1].set_xlim(0, duration)
    axes[1].set_xlabel("time (s)")
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def der_latency_png(path: Path, runs: Sequence[Mapping[str, Any]]) -> Path:
    """Total DER (and its parts, dotted) against latency, one line per variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rows = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["latency"])
        lat = [r["latency"] for r in rows]
        line = ax.plot(lat, [r["der"] for r in rows], marker="o", label=f"{variant} DER")[0]
        ax.plot(lat, [r["confusion"] for r in rows], linestyle=":", color=line.get_color(),
                label=f"{variant} confusion")
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("DER (%)")
    ax.set_xscale("log")
    latencies = sorted({r["latency"] for r in runs})
    ax.set_xticks(latencies)
    ax.set_xticklabels([f"{x:g}" for x in latencies])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("DER against latency", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
