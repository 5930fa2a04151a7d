"""`expclip cache info`: what a cache holds, as rich tables."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from expclip.cache.checksums import UNCHECKED_ROOT_ATTRS
from expclip.cache.format import partial_dir
from expclip.cache.reader import CacheReader

_SKIP = {"prompts", "class_index", "class_names", "versions", "sha256", "prompts_sha256"}
_CHECKSUM_ATTRS = set(UNCHECKED_ROOT_ATTRS) - {"complete"}  # summarised in one "checksums" row


def _short(value) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def info_tables(path: Path) -> list[Table]:
    """One table of file facts and one row per feature group with its provenance."""
    with CacheReader(path) as r:
        items, attrs = r.items(), r.attrs
        facts = Table(title=escape(str(path)), show_header=False)
        for k, v in sorted(attrs.items()):
            if k not in _CHECKSUM_ATTRS:
                facts.add_row(escape(k), escape(str(v)))
        verify = f"`expclip cache verify {escape(str(path))}`"
        facts.add_row("checksums", f"Fletcher-32 per chunk, checked on every read; items, metadata, strings "
                                   f"checked on open; {verify} checks each group's sha256")
        versions = [r.group_attrs(f"image/{k}").get("versions") for k in r.image_keys()]
        facts.add_row("versions", ", ".join(sorted({v for v in versions if v})) or "-")
        labelled = int((items.labels >= 0).sum())
        facts.add_row("items", f"{len(items)} ({labelled} labelled, {int((~items.ok).sum())} failed)")
        facts.add_row("classes", escape(", ".join(items.class_names)) or "-")
        if items.frame_index is not None:
            facts.add_row("frames per clip", str(items.frame_index.shape[1]))
        if partial_dir(Path(path)).exists():
            facts.add_row(
                "unfinished run", f"{escape(str(partial_dir(Path(path))))} (re-run the same extract to finish it)"
            )
        groups = Table(title="feature groups")
        for col in ("group", "shape", "dtype", "provenance"):
            groups.add_column(col, overflow="fold")
        for p in r.group_paths():
            shape, dtype = r.group_shape(p)
            a = r.group_attrs(p)
            if "prompts" in a:  # text groups share their encoder's provenance, shown above
                prov = f"{len(a['prompts'])} prompts, {len(set(a['class_index']))} classes"
            else:
                prov = "; ".join(f"{k}={_short(v)}" for k, v in sorted(a.items()) if k not in _SKIP)
            groups.add_row(escape(p), "×".join(map(str, shape)), dtype, escape(prov))
        return [facts, groups]
