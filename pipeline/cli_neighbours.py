"""`expclip search` and `expclip audit`: thin commands over stages.search and stages.audit (see expclip.cli)."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from expclip.base.errors import ExpclipError
from expclip.console import err, escape, out, user_errors
from expclip.options import configured, csv_option, json_option
from expclip.output_paths import check_outputs, head_paths
from expclip.stages.audit.config import AuditConfig
from expclip.stages.search.config import SearchConfig

if TYPE_CHECKING:  # sheets import matplotlib: loaded only when a sheet is asked for
    from expclip.reports.sheets import Locator


# --image-root, as search and audit both offer it with their contact sheets
IMAGE_ROOT = Annotated[Optional[Path], typer.Option(
    file_okay=False, help="Where the caches' images are now, if not where extract read them (--sheet reads only "
    "under it).")]

@configured(SearchConfig, k={"decls": ("-k",), "min": 1}, exact={"decls": ("--exact",)})
def search(
    config: SearchConfig,
    cache: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Cache to search.")],
    text: Annotated[
        Optional[list[str]], typer.Option("--text", help="Text query (repeatable), encoded by the cache's own CLIP.")
    ] = None,
    image: Annotated[
        Optional[list[Path]], typer.Option("--image", exists=True, dir_okay=False, help="Image query (repeatable).")
    ] = None,
    head: Annotated[
        Optional[Path], typer.Option(help="Search in this head's space (W x, normalised), as zero-shot scores.")
    ] = None,
    json_out: json_option("the hits") = None,
    sheet: Annotated[
        Optional[Path],
        typer.Option(
            dir_okay=False,
            help="Write a contact sheet of the hits (PNG; with several queries, one per query: NAME-1.png, ...).",
        ),
    ] = None,
    image_root: IMAGE_ROOT = None,
) -> None:
    """Nearest items of a cache to a text or an image (faiss index built once, kept beside the cache)."""
    from expclip.cache.reader import CacheReader
    from expclip.reports import files
    from expclip.reports import neighbours as report
    from expclip.stages.search import search as run_search
    from expclip.stages.search.queries import cache_encoder, encode_queries
    from expclip.stages.shared.heads import load_head
    from expclip.stages.shared.select import evaluation_key

    with user_errors():
        if not text and not image:
            raise ExpclipError("search: give a query with --text or --image")
        names = [*(f"text {t!r}" for t in text or []), *(f"image {p}" for p in image or [])]
        sheets = [] if sheet is None else [sheet] if len(names) == 1 else [
            sheet.with_name(f"{sheet.stem}-{n}{sheet.suffix}") for n in range(1, len(names) + 1)]
        read = {"CACHE": [cache], "--image": image or [], "--head": head_paths(head)}
        check_outputs(read, files=[("--json", json_out), *(("--sheet", s) for s in sheets)])
        where = _locators([cache], image_root, sheets)[str(cache)] if sheet else None  # no image root: refused now
        loaded = load_head(head) if head is not None else None
        with CacheReader(cache) as reader:
            key = evaluation_key(reader, loaded, config.clip_key)
        queries = encode_queries(cache_encoder(cache, key, config.device), list(text or []), list(image or []))
        found = run_search(cache, queries, config, head=loaded, clip_key=key)
        found["queries"] = names
        err.print(f"index {found['index']['spec']} of {found['index']['rows']:,} items "
                  f"({'built now' if found['index_built'] else 'reused'})", highlight=False)
        for name, hits in zip(names, found["hits"], strict=True):
            out.print(report.hits_table(name, hits))
        if json_out:
            files.write_json(found, json_out)
        if where is not None:
            from expclip.reports.sheets import hits_sheet

            for target, name, hits in zip(sheets, names, found["hits"], strict=True):
                err.print(f"wrote {escape(str(hits_sheet(where, name, hits, target)))}", highlight=False)
            _note_unshown([where])


@configured(AuditConfig, threshold={"min": 0.0, "max": 1.0}, within={"decls": ("--within/--no-within",)})
def audit(
    config: AuditConfig,
    caches: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, help="Cache(s) to audit, e.g. training sets.")
    ],
    against: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--against", exists=True, dir_okay=False, help="Cache(s) to compare with, e.g. test sets (repeatable)."
        ),
    ] = None,
    csv_out: csv_option("every pair (ids, frames, score)") = None,
    json_out: json_option("counts and pairs") = None,
    fail_on_leak: Annotated[
        bool, typer.Option("--fail-on-leak", help="Exit 1 when any pair spans two caches.")
    ] = False,
    sheet: Annotated[
        Optional[Path], typer.Option(dir_okay=False, help="Write a contact sheet of the closest pairs (PNG).")
    ] = None,
    image_root: IMAGE_ROOT = None,
) -> None:
    """Near-duplicate frames across caches (train/test leaks) and within each, by CLIP cosine."""
    from expclip.reports import files
    from expclip.reports import neighbours as report
    from expclip.stages.audit import audit as run_audit

    with user_errors():
        check_outputs({"CACHES": caches, "--against": against or []},
                      files=[("--csv", csv_out), ("--json", json_out), ("--sheet", sheet)])
        where = (
            _locators([*caches, *(against or [])], image_root, [sheet]) if sheet else {}
        )  # no image root: refused now
        found = run_audit(caches, list(against or []), config)
        out.print(report.audit_table(found))
        if csv_out:
            files.write_csv(report.pairs_table(found["pairs"]), csv_out)
        if json_out:
            files.write_json(found, json_out)
        if sheet and found["pairs"]:
            from expclip.reports.sheets import pairs_sheet

            err.print(f"wrote {escape(str(pairs_sheet(found['pairs'], sheet, where)))}", highlight=False)
            _note_unshown(list(where.values()))
    leaks = sum(c["pairs"] for c in found["counts"] if not c["within"])
    if leaks:
        err.print(f"[yellow]{leaks} near-duplicate pair(s) across caches at cosine >= {config.threshold}[/]",
                  highlight=False)
    if fail_on_leak and leaks:
        raise typer.Exit(1)


def _locators(caches: list[Path], image_root: Path | None, sheets: list[Path]) -> dict[str, "Locator"]:
    """Each cache (named as the results name it) -> where its images are for a sheet, found before any work;
    a sheet that would be written over one of those pictures is refused."""
    from expclip.reports.sheets import Locator

    found = {str(c): Locator(c, image_root) for c in caches}
    for target in sheets:
        for where in found.values():
            if (item := where.shows(target)) is not None:
                raise ExpclipError(f"--sheet {target}: is the picture of item {item!r} of {where.cache}; "
                                   "writing it would destroy it: give another path")
    return found


def _note_unshown(locators: list["Locator"]) -> None:
    from expclip.reports.sheets import unshown

    for line in filter(None, map(unshown, locators)):
        err.print(f"[yellow]note:[/] {escape(line)}", highlight=False)
