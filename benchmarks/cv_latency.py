"""DER against latency from a cross-validated tuning run (edged-cvtune), as a PNG and a table.

    .venv/bin/python benchmarks/cv_latency.py --cv OUT/cv-int8.json [--eval OUT/eval-fp32.json] \
        --output OUT/der-vs-latency.png [--table OUT/table.md]

Plots the validation-fold DER (mean over kinds of audio, and per kind) of the presets tuned per
latency beside diart's AMI preset on the same files and bundle; with ``--eval`` also the same
per-fold parameters on another variant (fp32). Prints (and with ``--table`` writes) the Markdown
table of DER / miss / false alarm / confusion per kind and latency. Write outputs outside the
repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KINDS = ("ami", "telephone", "farfield", "clean", "short")
LABELS = {"ami": "AMI meetings (close-talk mix)", "telephone": "telephone", "farfield": "far-field + noise (synthetic)",
          "clean": "clean (synthetic)", "short": "short clean"}


def _cell(r: dict) -> str:
    return f"{r['der']:.1f} ({r['miss']:.1f} / {r['false_alarm']:.1f} / {r['confusion']:.1f})"


def table(cv: dict, extra: dict | None = None) -> str:
    variant = cv["variant"]
    lines = ["| kind | latency | tuned, " + variant + " | diart AMI preset, " + variant +
             (f" | tuned, {extra['variant']} | diart AMI preset, {extra['variant']}" if extra else "") + " |",
             "|---|---|---|---|" + ("---|---|" if extra else "")]
    for kind in KINDS + ("mean",):
        for key, block in cv["latencies"].items():
            v, d = block["validation"], block["diart_ami"]
            if kind == "mean":
                row = [f"{v['mean']['der']:.1f} ({v['mean']['miss']:.1f} / {v['mean']['false_alarm']:.1f} / "
                       f"{v['mean']['confusion']:.1f})",
                       f"{d['mean']['der']:.1f} ({d['mean']['miss']:.1f} / {d['mean']['false_alarm']:.1f} / "
                       f"{d['mean']['confusion']:.1f})"]
            elif kind in v["kinds"]:
                row = [_cell(v["kinds"][kind]), _cell(d["kinds"][kind])]
            else:
                continue
            if extra:
                e = extra["latencies"].get(key)
                if e is None:
                    row += ["", ""]
                elif kind == "mean":
                    row += [f"{e['validation']['mean']['der']:.1f}", f"{e['diart_ami']['mean']['der']:.1f}"]
                else:
                    row += [_cell(e["validation"]["kinds"][kind]), _cell(e["diart_ami"]["kinds"][kind])]
            name = "**mean over kinds**" if kind == "mean" else LABELS[kind]
            lines.append(f"| {name} | {key} s | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(cv: dict, extra: dict | None, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = list(cv["latencies"])
    x = [float(k) for k in keys]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.8))
    ax = axes[0]
    ax.plot(x, [cv["latencies"][k]["validation"]["mean"]["der"] for k in keys], "o-", color="C0",
            label=f"tuned per latency ({cv['variant']}, validation folds)")
    ax.plot(x, [cv["latencies"][k]["diart_ami"]["mean"]["der"] for k in keys], "s--", color="C3",
            label=f"diart AMI preset ({cv['variant']})")
    if extra:
        ks = [k for k in keys if k in extra["latencies"]]
        ax.plot([float(k) for k in ks], [extra["latencies"][k]["validation"]["mean"]["der"] for k in ks], "^:",
                color="C2", label=f"tuned per latency ({extra['variant']}, validation folds)")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency, s")
    ax.set_ylabel("DER, % (mean over kinds of audio)")
    ax.set_title(f"{cv['k']}-fold grouped cross-validation, collar 0, overlap scored")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for i, kind in enumerate(KINDS):
        tuned = [cv["latencies"][k]["validation"]["kinds"][kind]["der"] for k in keys]
        base = [cv["latencies"][k]["diart_ami"]["kinds"][kind]["der"] for k in keys]
        ax.plot(x, tuned, "o-", color=f"C{i}", label=f"{LABELS[kind]}: tuned")
        ax.plot(x, base, "--", color=f"C{i}", alpha=0.5, label=f"{LABELS[kind]}: diart AMI")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency, s")
    ax.set_ylabel("DER, %")
    ax.set_title("per kind (dashed: diart AMI preset)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cv", type=Path, required=True, help="cv-VARIANT.json of edged-cvtune tune")
    p.add_argument("--eval", type=Path, default=None, help="eval-VARIANT.json of edged-cvtune evaluate (optional)")
    p.add_argument("--output", type=Path, required=True, help="PNG to write (outside the repository)")
    p.add_argument("--table", type=Path, default=None, help="also write the Markdown table here")
    args = p.parse_args(argv)
    cv = json.loads(args.cv.read_text(encoding="utf-8"))
    extra = json.loads(args.eval.read_text(encoding="utf-8")) if args.eval else None
    plot(cv, extra, args.output)
    text = table(cv, extra)
    print(text)
    if args.table:
        args.table.write_text(text, encoding="utf-8")
    print(f"figure: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
