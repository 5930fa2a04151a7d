"""Confusion matrices as pictures people read: per dataset, CLIP beside Exp-CLIP, rows normalised.

`write_dataset_sheets` (evaluate --out-dir): one PNG per dataset, `<dataset>.png`
(`<dataset>-<cache stem>.png` when two caches share a dataset name), one row
per prompt set and one column per method, CLIP then Exp-CLIP, so the two are
compared on the same prompts. Rows are true classes, columns predicted; each
cell is the share of its true class predicted as its column (the diagonal is
per-class recall, what UAR averages), in percent, with the count beneath. A
class absent from the ground truth is a grey row.

`write_count_panels` (evaluate --confusion-counts): one panel of raw counts per
record, `<dataset>__<method>__<prompt_set>.png`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from expclip.cache.atomic import ensure_folder
from expclip.cache.format import sanitize
from expclip.reports.evaluation import METHOD_ROWS
from expclip.reports.files import write_png

CMAP = "Blues"


def shares(confusion: list[list[int]]) -> np.ndarray:
    """Each row divided by its sum, in percent; NaN for a row without ground truth."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100 * counts / totals, np.nan)


def _datasets(records: list[dict]) -> dict[str, list[dict]]:
    """File stem -> that cache's records; the cache's stem joins the dataset name when two caches share it."""
    caches = list(dict.fromkeys(r["cache"] for r in records))
    names = {c: next(r["dataset"] for r in records if r["cache"] == c) for c in caches}
    shared = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {sanitize(f"{n}-{Path(c).stem}" if n in shared else n): [r for r in records if r["cache"] == c]
            for c, n in names.items()}


def _panel(ax, record: dict, label: str) -> None:
    share, counts = shares(record["confusion"]), np.asarray(record["confusion"])
    cmap = colormaps[CMAP].with_extremes(bad="0.85")
    ax.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0, vmax=100)
    for (i, j), v in np.ndenumerate(share):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0f}%\n({counts[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if v > 60 else "black")
    n = len(record["classes"])
    ax.set_xticks(range(n), record["classes"], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), record["classes"], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{label} — {record['prompt_set']}\nUAR {record['uar']:.2f} / WAR {record['war']:.2f}", fontsize=9)


def dataset_figure(records: list[dict], title: str) -> Figure:
    """One dataset's records: a row per prompt set, a column per method present (CLIP, Exp-CLIP)."""
    sets = list(dict.fromkeys(r["prompt_set"] for r in records))
    methods = [(m, label) for m, label in METHOD_ROWS if any(r["method"] == m for r in records)]
    found = {(r["prompt_set"], r["method"]): r for r in records}
    side = 1.4 + 0.55 * max(len(r["classes"]) for r in records)
    fig = Figure(figsize=(side * len(methods) + 0.8, side * len(sets) + 0.4), layout="constrained")
    axes = fig.subplots(len(sets), len(methods), squeeze=False)
    for row, prompt_set in zip(axes, sets):
        for ax, (method, label) in zip(row, methods):
            if (prompt_set, method) in found:
                _panel(ax, found[prompt_set, method], label)
            else:
                ax.set_title(f"{label} — {prompt_set}: not evaluated", fontsize=9)
                ax.axis("off")
    shown = [ax.images[0] for ax in axes.ravel() if ax.images]
    if shown:
        fig.colorbar(shown[0], ax=axes.ravel().tolist(), shrink=0.6, label="% of the true class")
    fig.suptitle(title)
    return fig


def write_dataset_sheets(records: list[dict], out_dir: Path) -> list[Path]:
    """One side-by-side, row-normalised PNG per dataset in `out_dir` (created if missing); returns the paths."""
    ensure_folder(out_dir)
    return [write_png(dataset_figure(group, f"{group[0]['dataset']} ({Path(group[0]['cache']).name})"),
                      Path(out_dir) / f"{stem}.png") for stem, group in _datasets(records).items()]


def png_name(record: dict, *, with_cache: bool = False) -> str:
    """`<dataset>__<method>__<prompt_set>.png`; `with_cache` adds the cache's stem to the dataset part."""
    dataset = f"{record['dataset']}-{Path(record['cache']).stem}" if with_cache else record["dataset"]
    return "__".join(sanitize(v) for v in (dataset, record["method"], record["prompt_set"])) + ".png"


def write_count_panels(records: list[dict], out_dir: Path) -> list[Path]:
    """One raw-count confusion-matrix PNG per record in `out_dir` (created if missing); returns the paths."""
    ensure_folder(out_dir)
    written = []
    caches_per_dataset = {
        d: {r["cache"] for r in records if r["dataset"] == d} for d in {r["dataset"] for r in records}
    }
    for r in records:
        size = 2.5 + 0.6 * len(r["classes"])
        fig = Figure(figsize=(size + 1, size), layout="constrained")
        display = ConfusionMatrixDisplay(np.asarray(r["confusion"]), display_labels=r["classes"])
        display.plot(ax=fig.subplots(), xticks_rotation=45, colorbar=True, cmap=CMAP)
        display.ax_.set_title(
            f"{r['dataset']} — {r['method']} — {r['prompt_set']}\nUAR {r['uar']:.2f} / WAR {r['war']:.2f}"
        )
        path = Path(out_dir) / png_name(r, with_cache=len(caches_per_dataset[r["dataset"]]) > 1)  # never overwrite
        written.append(write_png(fig, path))
    return written
