"""Evaluation records as the paper's Table 2 (rich) and CSV rows.

Formats (written by `reports.files`, each whole or not at all):

- JSON: the list of records exactly as `stages.evaluate.evaluate` returns them.
- CSV: one row per record; columns `dataset, method, prompt_set, ensemble, uar,
  war, n, skipped, clip_key, cache`, then `recall_<Class>` for every class of
  any record in canonical order (empty where the class is absent from the
  dataset or from its ground truth). Percentages, full precision.
- PNG: confusion matrices, see `reports.confusion`.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from expclip.reports.files import CsvTable
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


def csv_table(records: list[dict]) -> CsvTable:
    """The CSV described in the module docstring, for `files.write_csv`."""
    present = {c for r in records for c in r["classes"]}
    classes = [c for c in protocol.class_order() if c in present] + sorted(present - set(protocol.class_order()))
    rows = [[r[f] for f in CSV_FIELDS] + [r["per_class"].get(c) for c in classes] for r in records]
    return CSV_FIELDS + [f"recall_{c}" for c in classes], rows


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


def rows_table(rows: list[dict]) -> CsvTable:
    """Flat rows (all with the same keys) for `files.write_csv`, header first."""
    header = list(rows[0]) if rows else []
    return header, [[r[k] for k in header] for r in rows]
