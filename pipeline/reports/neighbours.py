"""Search hits and audit results as rich tables and the audit's CSV table (written by `reports.files`).

Audit CSV: one row per pair, highest score first, columns
`a, a_id, a_frame, b, b_id, b_frame, score` (cache paths, item ids as the
caches store them, frame slots for clips — empty for images — and the cosine).
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from expclip.reports.files import CsvTable

PAIR_FIELDS = ["a", "a_id", "a_frame", "b", "b_id", "b_frame", "score"]
SHOWN_PAIRS = 20


def hits_table(query: str, hits: list[dict]) -> Table:
    table = Table(title=f"nearest items to {escape(query)}")
    for name in ("rank", "score", "item id", "label"):
        table.add_column(name, justify="right" if name in ("rank", "score") else "left")
    for h in hits:
        table.add_row(str(h["rank"]), f"{h['score']:.4f}", escape(h["id"]), escape(h["label"] or ""))
    return table


def audit_table(report: dict) -> Table:
    """Counts per pair of caches, then the closest pairs."""
    table = Table(title=f"near-duplicates at cosine >= {report['threshold']} ({escape(report['clip_key'])})")
    for name in ("cache", "against", "pairs", "items", "items against"):
        table.add_column(name, justify="right" if name.startswith(("pairs", "items")) else "left")
    for c in report["counts"]:
        table.add_row(
            escape(Path(c["a"]).name),
            "itself" if c["within"] else escape(Path(c["b"]).name),
            f"{c['pairs']:,}",
            f"{c['items_a']:,}",
            f"{c['items_b']:,}",
        )
    for p in report["pairs"][:SHOWN_PAIRS]:
        table.add_row(escape(f"{p['a_id']}{_frame(p['a_frame'])}"), escape(f"{p['b_id']}{_frame(p['b_frame'])}"),
                      f"{p['score']:.4f}", "", "", style="dim")
    return table


def _frame(slot: int | None) -> str:
    return "" if slot is None else f" #{slot}"


def pairs_table(pairs: list[dict]) -> CsvTable:
    """The audit CSV described in the module docstring, for `files.write_csv`."""
    return PAIR_FIELDS, [[p[k] for k in PAIR_FIELDS] for p in pairs]
