"""What every benchmark case does with its figures: one aligned table on stdout, the figures as JSON,
charts as PNG, all under one output directory.

    out = output_dir(args.out, "commit")          # --out DIR, or a new temp dir; printed
    print_table(rows, ["case", "events_per_s"])   # rows are dicts; columns pick and order them
    write_json(out / "commit.json", figures)
    save_chart(out / "commit.png", title=..., ylabel=..., series={"label": (xs, ys)}, kind="bar")
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def add_output_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """--out and --quick, the same for every case."""
    parser.add_argument("--out", metavar="DIR", help="directory for the JSON and PNG files (default: a new temp dir)")
    parser.add_argument("--quick", action="store_true", help=quick_help)


def output_dir(out: str | None, case: str) -> Path:
    path = Path(out) if out else Path(tempfile.mkdtemp(prefix=f"event-ingest-bench-{case}-"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"bench {case}: figures go to {path}", file=sys.stderr, flush=True)
    return path


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as aligned text: text columns to the left, numbers to the right."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, title: str | None = None
) -> None:
    if title:
        print(title)
    print(format_table(rows, columns), flush=True)


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def save_chart(
    path: Path,
    *,
    title: str,
    ylabel: str,
    series: Mapping[str, tuple[Sequence, Sequence[float]]],
    kind: str = "line",
    xlabel: str = "",
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """One PNG: `series` maps a label to (x values, y values). kind "line" draws points joined by
    lines; "bar" draws grouped bars, one group per x value (x values are category names)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if kind == "bar":
            categories = list(dict.fromkeys(x for xs, _ in series.values() for x in xs))
            width = 0.8 / max(len(series), 1)
            for i, (label, (xs, ys)) in enumerate(series.items()):
                at = {x: y for x, y in zip(xs, ys)}
                positions = [c + (i - (len(series) - 1) / 2) * width for c in range(len(categories))]
                bars = ax.bar(positions, [at.get(c, 0) for c in categories], width, label=label)
                ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
            ax.set_xticks(range(len(categories)), [str(c) for c in categories])
        elif kind == "line":
            for label, (xs, ys) in series.items():
                ax.plot(list(xs), list(ys), marker="o", label=label)
            if logx:
                ax.set_xscale("log")
            if logy:
                ax.set_yscale("log")
        else:
            raise ValueError(f"unknown chart kind {kind!r}")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
