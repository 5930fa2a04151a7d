"""The one output layer: every JSON, CSV, PNG, npy and parquet file a command writes goes through here.

Each file is written whole or not at all (`cache.atomic.write_atomically`:
a temporary beside it, renamed into place), so a reader never sees half a
report and a failed write leaves the old file. Commands build their own
tables (`evaluation.csv_table`, `neighbours.pairs_table`, `predictions.csv_table`);
this module only writes them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from expclip.base.errors import ExpclipError
from expclip.cache.atomic import write_atomically

if TYPE_CHECKING:  # JSON and CSV writers do not load matplotlib
    from matplotlib.figure import Figure

CsvTable = tuple[Sequence[str], Iterable[Sequence[object]]]  # header, then rows (None: an empty cell)
DPI = 100  # pictures' pixel sizes are their figure sizes in inches times this


def write_json(data: object, path: Path) -> Path:
    """`data` as indented JSON; NaN and infinity are not JSON, so they are one ExpclipError and nothing is written."""
    try:
        text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    except ValueError:
        raise ExpclipError(
            f"{path}: the results hold NaN or infinity, which JSON cannot hold; nothing written"
        ) from None
    return write_atomically(path, lambda tmp: tmp.write_text(text, "utf-8"))


def csv_text(table: CsvTable) -> str:
    """A header and rows as CSV text ('\\n' line ends, None as an empty cell)."""
    header, rows = table
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buffer.getvalue()


def write_csv(table: CsvTable, path: Path) -> Path:
    text = csv_text(table)
    return write_atomically(path, lambda tmp: tmp.write_text(text, "utf-8"))


def write_png(picture: Figure | Image.Image, path: Path) -> Path:
    """A matplotlib figure (at DPI) or a PIL image as PNG."""
    if isinstance(picture, Image.Image):
        return write_atomically(path, lambda tmp: picture.save(tmp, format="PNG"))
    return write_atomically(path, lambda tmp: picture.savefig(tmp, format="png", dpi=DPI))


def write_npy(path: Path, dtype: np.dtype, shape: tuple[int, int], blocks: Iterable[np.ndarray]) -> Path:
    """An .npy array of `shape` filled from `blocks` (consecutive rows), never held whole in memory."""

    def write(tmp: Path) -> None:
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        at = 0
        for block in blocks:
            rows[at:at + len(block)] = block
            at += len(block)
        rows.flush()
        del rows

    return write_atomically(path, write)


def write_parquet(columns: dict[str, list], path: Path, types: dict | None = None) -> Path:
    """Named columns as one parquet table; a column's arrow type from `types` (by name), else string."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = types or {}
    table = pa.table({name: pa.array(values, type=types.get(name, pa.string())) for name, values in columns.items()})
    return write_atomically(path, lambda tmp: pq.write_table(table, tmp))
