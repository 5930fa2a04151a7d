"""Evaluation records as the paper's Table 2 (rich), JSON, CSV and PNG confusion matrices.

Formats (each file written to a temporary name and renamed into place):

- JSON: the list of records exactly as `stages.evaluate.evaluate` returns them.
- CSV: one row per record; columns `dataset, method, prompt_set, ensemble, uar,
  war, n, skipped, clip_key, cache`, then `recall_<Class>` for every class of
  any record in canonical order (empty where the class is absent from the
  dataset or from its ground truth). Percentages, full precision.
- PNG: `<dataset>__<method>__<prompt_set>.png`, one confusion matrix per record
  (rows: true class, columns: predicted); when two caches share a dataset
  name, the dataset part becomes `<dataset>-<cache stem>`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.markup import escape
from rich.table import Table
from sklearn.metrics import ConfusionMatrixDisplay

from expclip.base.errors import ExpclipError
from expclip.cache.atomic import write_atomically
from expclip.cache.format import sanitize
from expclip.stages.shared import protocol

METHOD_ROWS = (("clip", "CLIP"), ("exp-clip", "Exp-CLIP"))
CSV_FIELDS = ["dataset", "method", "prompt_set", "ensemble", "uar", "war", "n", "skipped", "clip_key", "cache"]


def _cell(record: dict | None) -> str:
    return "—" if record is None else f"{record['uar']:.2f} / {record['war']:.2f}"


def tables(records: list[dict]) -> list[Table]:
    """One table per prompt set: rows CLIP, Exp-CLIP and Δ, one 'UAR / WAR' column per cache."""
    caches = list(dict.fromkeys(r["cache"] for r in records))
    names = {r["cache"]: r["dataset"] for r in records}
    found = {(r["prompt_set"], r["method"], r["cache"]): r for r in records}
    result = []
    for prompt_set in dict.fromkeys(r["prompt_set"] for r in records):
        ensemble = next(r["ensemble"] for r in records if r["prompt_set"] == prompt_set)
        table = Table(title=f"Zero-shot UAR / WAR (%) — prompt set {escape(prompt_set)}, {ensemble} ensemble")
        table.add_column("method")
        for cache in caches:
            table.add_column(escape(names[cache]), justify="right")
        rows = {m: [found.get((prompt_set, m, c)) for c in caches] for m, _ in METHOD_ROWS}
        for method, label in METHOD_ROWS:
            if any(rows[method]):
                table.add_row(label, *map(_cell, rows[method]))
        if any(rows["clip"]) and any(rows["exp-clip"]):
            table.add_row("Δ", *(_delta(a, b) for a, b in zip(rows["clip"], rows["exp-clip"])), style="bold")
        result.append(table)
    return result


def _delta(clip: dict | None, exp: dict | None) -> str:
    if clip is None or exp is None:
        return "—"
    return f"{exp['uar'] - clip['uar']:+.2f} / {exp['war'] - clip['war']:+.2f}"


def write_json(records: list[dict] | dict, path: Path) -> None:
    try:
        text = json.dumps(records, indent=1, allow_nan=False) + "\n"
    except ValueError:  # NaN or inf is not JSON: never written, and no traceback either
        raise ExpclipError(
            f"{path}: the results hold NaN or infinity, which JSON cannot hold; nothing written"
        ) from None
    write_atomically(path, lambda tmp: tmp.write_text(text, "utf-8"))


def csv_text(records: list[dict]) -> str:
    """The CSV described in the module docstring."""
    present = {c for r in records for c in r["classes"]}
    classes = [c for c in protocol.class_order() if c in present] + sorted(present - set(protocol.class_order()))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS + [f"recall_{c}" for c in classes])
    for r in records:
        recalls = [r["per_class"].get(c) for c in classes]
        writer.writerow([r[f] for f in CSV_FIELDS] + ["" if v is None else v for v in recalls])
    return buffer.getvalue()


def write_csv(records: list[dict], path: Path) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(csv_text(records), "utf-8"))


def png_name(record: dict, *, with_cache: bool = False) -> str:
    """`<dataset>__<method>__<prompt_set>.png`; `with_cache` adds the cache's stem to the dataset part."""
    dataset = f"{record['dataset']}-{Path(record['cache']).stem}" if with_cache else record["dataset"]
    return "__".join(sanitize(v) for v in (dataset, record["method"], record["prompt_set"])) + ".png"


def write_confusion_pngs(records: list[dict], out_dir: Path) -> list[Path]:
    """One confusion-matrix PNG per record in `out_dir` (created if missing); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    caches_per_dataset = {
        d: {r["cache"] for r in records if r["dataset"] == d} for d in {r["dataset"] for r in records}
    }
    for r in records:
        size = 2.5 + 0.6 * len(r["classes"])
        fig = Figure(figsize=(size + 1, size), layout="constrained")
        display = ConfusionMatrixDisplay(np.asarray(r["confusion"]), display_labels=r["classes"])
        display.plot(ax=fig.subplots(), xticks_rotation=45, colorbar=True, cmap="Blues")
        display.ax_.set_title(
            f"{r['dataset']} — {r['method']} — {r['prompt_set']}\nUAR {r['uar']:.2f} / WAR {r['war']:.2f}"
        )
        path = out_dir / png_name(r, with_cache=len(caches_per_dataset[r["dataset"]]) > 1)  # never overwrite
        write_atomically(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100))
        written.append(path)
    return written


def grid_table(rows: list[dict]) -> Table:
    """Ablation rows (pipeline.ablate.rows) as one table: grid values, prompt set, 'UAR / WAR' per dataset."""
    params = [k for k in rows[0] if k not in GRID_ROW_FIELDS] if rows else []
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    table = Table(title="Ablation: zero-shot UAR / WAR (%)")
    for name in [*params, "prompt_set", *datasets, "reused"]:
        table.add_column(escape(name), justify="right" if name in datasets else "left")
    grouped: dict[tuple, dict] = {}
    for r in rows:
        grouped.setdefault((r["run"], r["prompt_set"]), {})[r["dataset"]] = r
    for (_, prompt_set), by_dataset in grouped.items():
        first = next(iter(by_dataset.values()))
        cells = [_cell(by_dataset.get(d)) for d in datasets]
        table.add_row(
            *[escape(str(first[p])) for p in params], escape(prompt_set), *cells, "yes" if first["reused"] else "no"
        )
    return table


GRID_ROW_FIELDS = ("run", "dataset", "prompt_set", "uar", "war", "n", "reused")


def write_rows_csv(rows: list[dict], path: Path) -> None:
    """Flat rows (all with the same keys) as CSV, header first."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)
