"""`expclip search` and `expclip audit`: thin commands over stages.search and stages.audit (see expclip.cli)."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from expclip.base.errors import ExpclipError
from expclip.console import err, escape, out, user_errors
from expclip.output_paths import head_paths, writable_files
from expclip.stages.shared.vocabulary import AUTO, DEVICE_HELP, NEAR_DUPLICATE

if TYPE_CHECKING:  # sheets import matplotlib: loaded only when a sheet is asked for
    from expclip.reports.sheets import Locator


def search(
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
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours per query.")] = 20,
    exact: Annotated[
        bool, typer.Option("--exact", help="Exact search (faiss Flat) whatever the cache's size.")
    ] = False,
    clip_key: Annotated[
        Optional[str], typer.Option(help="Image key when the cache holds several CLIP encoders.")
    ] = None,
    device: Annotated[str, typer.Option(help=f"Where the query encoder runs: {DEVICE_HELP}")] = AUTO,
    json_out: Annotated[Optional[Path], typer.Option("--json", dir_okay=False, help="Write the hits as JSON.")] = None,
    sheet: Annotated[
        Optional[Path],
        typer.Option(
            dir_okay=False,
            help="Write a contact sheet of the hits (PNG; with several queries, one per query: NAME-1.png, ...).",
        ),
    ] = None,
    image_root: Annotated[
        Optional[Path],
        typer.Option(
            file_okay=False,
            help="Where the cache's images are now (for --sheet, which reads only under it), "
            "if not where extract read them.",
        ),
    ] = None,
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
        writable_files([("--json", json_out), *(("--sheet", s) for s in sheets)], read)
        where = _locators([cache], image_root, sheets)[str(cache)] if sheet else None  # no image root: refused now
        loaded = load_head(head) if head is not None else None
        with CacheReader(cache) as reader:
            key = evaluation_key(reader, loaded, clip_key)
        queries = encode_queries(cache_encoder(cache, key, device), list(text or []), list(image or []))
        found = run_search(cache, queries, head=loaded, k=k, exact=exact, clip_key=key)
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


def audit(
    caches: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, help="Cache(s) to audit, e.g. training sets.")
    ],
    against: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--against", exists=True, dir_okay=False, help="Cache(s) to compare with, e.g. test sets (repeatable)."
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Cosine at or above which two frames are near-duplicates.")
    ] = NEAR_DUPLICATE,
    within: Annotated[bool, typer.Option("--within/--no-within", help="Also pairs inside each cache.")] = True,
    clip_key: Annotated[
        Optional[str], typer.Option(help="Image key when the caches hold several CLIP encoders.")
    ] = None,
    csv_out: Annotated[
        Optional[Path], typer.Option("--csv", dir_okay=False, help="Write every pair (ids, frames, score) as CSV.")
    ] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", dir_okay=False, help="Write counts and pairs as JSON.")
    ] = None,
    fail_on_leak: Annotated[
        bool, typer.Option("--fail-on-leak", help="Exit 1 when any pair spans two caches.")
    ] = False,
    device: Annotated[str, typer.Option(help=f"Where the products run (faiss on the CPU): {DEVICE_HELP}")] = AUTO,
    sheet: Annotated[
        Optional[Path], typer.Option(dir_okay=False, help="Write a contact sheet of the closest pairs (PNG).")
    ] = None,
    image_root: Annotated[
        Optional[Path],
        typer.Option(
            file_okay=False, help="Where the caches' images are now (for --sheet, which reads only under it), if moved."
        ),
    ] = None,
) -> None:
    """Near-duplicate frames across caches (train/test leaks) and within each, by CLIP cosine."""
    from expclip.reports import files
    from expclip.reports import neighbours as report
    from expclip.stages.audit import audit as run_audit

    with user_errors():
        writable_files([("--csv", csv_out), ("--json", json_out), ("--sheet", sheet)],
                       {"CACHES": caches, "--against": against or []})
        where = (
            _locators([*caches, *(against or [])], image_root, [sheet]) if sheet else {}
        )  # no image root: refused now
        found = run_audit(caches, list(against or []), threshold=threshold, within=within, clip_key=clip_key,
                          device=device)
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
        err.print(f"[yellow]{leaks} near-duplicate pair(s) across caches at cosine >= {threshold}[/]", highlight=False)
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
