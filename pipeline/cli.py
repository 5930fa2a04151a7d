"""The `expclip` command line: one thin function per command that parses and calls a stage."""

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

# Configs, vocabularies and sources are data only: `expclip --help` never imports torch.
from expclip import cli_export, cli_neighbours, cli_predict, cli_run
from expclip.base.errors import ExpclipError
from expclip.cli_app import InUseOrder, shared_options
from expclip.console import err, escape, out, user_errors
from expclip.options import GROUP_OPTIONS, choice, configured, csv_option, json_option, options
from expclip.output_paths import check_outputs, head_paths
from expclip.stages.evaluate.config import EvaluateConfig
from expclip.stages.extract import sources
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.extract.source_config import SourceConfig
from expclip.stages.fit_head.config import FitConfig
from expclip.stages.shared.common_settings import CacheGroups
from expclip.stages.shared.vocabulary import NEAR_DUPLICATE

SOURCE_OPTIONS = options(SourceConfig)
HEAD_FORMATS = ("official",)  # the Exp-CLIP release .pth

app = typer.Typer(
    cls=InUseOrder, callback=shared_options, no_args_is_help=True,
    help="Exp-CLIP zero-shot FER: extract encoder features once, then fit heads and evaluate from the cache.",
)
cache_app = typer.Typer(no_args_is_help=True, help="Inspect feature caches.")
head_app = typer.Typer(no_args_is_help=True, help="Convert heads between formats.")


@configured(ExtractConfig, teacher={"show_default": True}, instruction={"show_default": False},
            prompts={"exists": True, "dir_okay": False}, batch_size={"min": 1}, num_workers={"min": 0},
            shard_size={"min": 1})
def extract(
    cfg: ExtractConfig,
    source: Annotated[
        Path, typer.Argument(help="Image folder, list file (.csv/.txt: path[,label]), clip list "
        "(frame_dir num_frames label) or WebDataset tar shards ('faces-{00000..00099}.tar').")],
    cache: Annotated[Path, typer.Option("--out", dir_okay=False, help="File: the cache to create or extend (HDF5).")],
    no_teacher: Annotated[bool, typer.Option("--no-teacher", help="Skip the teacher (evaluation sets).")] = False,
    source_type: SOURCE_OPTIONS.source_type = SourceConfig.source_type,
    root: SOURCE_OPTIONS.root = SourceConfig.root,
    strip_prefix: SOURCE_OPTIONS.strip_prefix = SourceConfig.strip_prefix,
    frames: SOURCE_OPTIONS.frames = SourceConfig.frames,
    dataset: SOURCE_OPTIONS.dataset = SourceConfig.dataset,
    label_field: SOURCE_OPTIONS.label_field = SourceConfig.label_field,
) -> None:
    """Stage one: encode every face once (CLIP image + text, BLIP-2 teacher) into CACHE.h5.

    Several processes: `torchrun --nproc_per_node N -m expclip extract ...` (or `accelerate launch`);
    job arrays: `--part K/N` per task, then once without --part to merge (docs/scale.md).
    """
    from expclip.stages.extract import counts
    from expclip.stages.extract import extract as run_extract

    with user_errors():
        reading = SourceConfig(source_type=source_type, root=root, strip_prefix=strip_prefix, frames=frames,
                               dataset=dataset, label_field=label_field)
        reading.check()
        check_outputs({"SOURCE": sources.named_files(source, reading.source_type), "--prompts": [cfg.prompts]},
                      files=[("--out", cache)], create=True)
        src = sources.from_config(source, reading)
        if no_teacher:
            cfg = dataclasses.replace(cfg, teacher=None)
        summary = run_extract(src, cache, cfg)
    if summary["rank"] != 0:
        return  # rank 0 reports for the whole job
    if summary["part"] is not None:
        k, n = summary["part"]
        out.print(f"part {k}/{n} of {summary['cache']}: {summary['encoded_rows']} items encoded; "
                  "when every part has finished, run the same command without --part to merge", markup=False)
        return
    if summary["encoded_rows"] == 0 and not summary["loaded"] and not summary["merged"]:
        out.print(f"{summary['cache']}: already complete, nothing to encode", markup=False)
        return
    for item_id, reason in summary["failures"].items():
        err.print(f"[yellow]skipped[/] {escape(item_id)}: {escape(reason)}", highlight=False)
    if summary["ignored_files"]:
        err.print(f"[yellow]ignored[/] {summary['ignored_files']} non-image files in {escape(str(source))}")
    resumed = "; merged the shards of an earlier run" if summary["merged"] and not summary["loaded"] else ""
    out.print(f"wrote {summary['cache']} ({counts(summary)}{resumed})", markup=False)
    if summary["encoded_rows"]:
        err.print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary["seconds"].items()), highlight=False)


@cache_app.command("info")
def cache_info(cache: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A cache file.")]) -> None:
    """Groups, shapes, dtypes, provenance and completeness of a cache."""
    from expclip.cacheinfo import info_tables

    with user_errors():
        for table in info_tables(cache):
            out.print(table)


@cache_app.command("verify")
def cache_verify(
    caches: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Cache file(s).")],
) -> None:
    """Recompute every checksum of each cache from its stored bytes: exit 1 if a part is damaged, 2 if unreadable."""
    from expclip.cache.verify import verify_cache

    code = 0
    for path in caches:
        try:
            found = verify_cache(path)
        except ExpclipError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            code = 2
            continue
        for line in found.problems:
            out.print(f"[bold red]damaged:[/] {escape(line)}", highlight=False)
        (out if found.ok else err).print(escape(found.summary()), highlight=False)
        code = max(code, 0 if found.ok else 1)
    raise typer.Exit(code)


cache_app.command("export")(cli_export.export)  # after info and verify: listed in that order


@configured(EvaluateConfig, baseline={"decls": ("--baseline",)}, prompt_sets={"decls": ("--prompt-set",)})
def evaluate(
    config: EvaluateConfig,
    cache: Annotated[
        list[Path], typer.Option("--cache", exists=True, dir_okay=False, help="Evaluation cache (repeat for several "
        "datasets).")],
    head: Annotated[
        Optional[Path], typer.Option(help="HEAD (stem, .safetensors or .json) or an official .pth.")] = None,
    json_out: json_option("the records") = None,
    csv_out: csv_option("one row per record") = None,
    out_dir: Annotated[Optional[Path], typer.Option(file_okay=False, help="Folder for PNG confusion matrices: one "
        "per dataset, CLIP beside Exp-CLIP, rows normalised (per-class recall) with counts.")] = None,
    confusion_counts: Annotated[bool, typer.Option("--confusion-counts", help="With --out-dir: one raw-count "
        "panel per dataset, method and prompt set instead.")] = False,
) -> None:
    """Zero-shot UAR / WAR of a head (Exp-CLIP) and of plain CLIP, as in the paper's Table 2."""
    import warnings

    from expclip.reports import evaluation as report
    from expclip.reports import files
    from expclip.stages.evaluate import evaluate as run_evaluate
    from expclip.stages.shared.heads import load_head

    with user_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read = {"--cache": cache, "--head": head_paths(head), "--label-map": _file(config.label_map)}
        if confusion_counts and out_dir is None:
            raise ExpclipError("--confusion-counts: draws into --out-dir DIR; give one")
        check_outputs(read, files=[("--json", json_out), ("--csv", csv_out)],
                      folders=[("--out-dir", out_dir, ["*.png"])])  # reports.confusion
        records = run_evaluate(load_head(head) if head is not None else None, cache, config)
        for w in caught:
            err.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False)
        for table in report.tables(records):
            out.print(table)
        if json_out:
            files.write_json(records, json_out)
        if csv_out:
            files.write_csv(report.csv_table(records), csv_out)
        if out_dir:
            from expclip.reports import confusion

            write = confusion.write_count_panels if confusion_counts else confusion.write_dataset_sheets
            written = write(records, out_dir)
            out.print(f"wrote {len(written)} confusion matrices to {out_dir}", markup=False)


@configured(FitConfig, batch_size={"min": 2}, epochs={"min": 1})
def fit_head(
    config: FitConfig,
    caches: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, help="Training cache(s) with image and teacher "
        "features (rows are concatenated).")],
    head_out: Annotated[
        Path, typer.Option("--out", dir_okay=False, help="File stem HEAD: writes the head as HEAD.safetensors and "
        "HEAD.json.")],
    clip_key: GROUP_OPTIONS.clip_key = CacheGroups.clip_key,
    teacher_key: GROUP_OPTIONS.teacher_key = CacheGroups.teacher_key,
    instruction: GROUP_OPTIONS.instruction = CacheGroups.instruction,
    exclude_near_duplicates_of: Annotated[
        Optional[list[Path]], typer.Option("--exclude-near-duplicates-of", exists=True, dir_okay=False,
        help="Evaluation cache (repeatable): leave out training rows that `expclip audit` pairs with it.")] = None,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Cosine for --exclude-near-duplicates-of.")] = NEAR_DUPLICATE,
) -> None:
    """Stage two: train the head on cached features (the paper's run by default)."""
    from expclip.stages.fit_head import fit_head as run_fit_head
    from expclip.stages.shared.heads import head_files

    files = head_files(head_out)
    with user_errors():
        select = CacheGroups(clip_key=clip_key, teacher_key=teacher_key, instruction=instruction)
        read = {"CACHES": caches, "--exclude-near-duplicates-of": exclude_near_duplicates_of or [],
                "--init-from": head_paths(config.init_from)}
        check_outputs(read, files=[("--out", written) for written in files], create=True)  # before training
        exclude = None
        if exclude_near_duplicates_of:
            from expclip.stages.audit.leaks import near_duplicates_of

            exclude = near_duplicates_of(caches, exclude_near_duplicates_of, threshold, select.clip_key)
            err.print(f"leaving out {exclude.count()} training row(s) within cosine {threshold} of "
                      f"{', '.join(map(str, exclude_near_duplicates_of))}", highlight=False, markup=False)
        meta = run_fit_head(caches, head_out, config, **vars(select), exclude=exclude)
    last = meta["history"][-1]
    out.print(f"wrote {files[0]} and {files[1]} "
              f"({meta['n_train']} pairs, {meta['mode']}, {meta['wall_seconds']:.1f} s)", markup=False)
    out.print(f"final epoch {last['epoch']}: loss {last['loss']:.4f}, in-batch accuracy {100 * last['accuracy']:.1f}%")


@head_app.command("export")
def head_export(
    head: Annotated[Path, typer.Argument(help="HEAD (stem, .safetensors or .json).")],
    target: Annotated[Path, typer.Option("--out", dir_okay=False, help="File: the head to write, e.g. HEAD.pth.")],
    to: Annotated[
        choice(HEAD_FORMATS), typer.Option("--format", help="official: the Exp-CLIP release's .pth state dict "
        "{mlp.weight}.")] = "official",
) -> None:
    """Write a linear head in the official Exp-CLIP .pth format (loadable by the original code)."""
    from expclip.stages.shared.heads import export_official, load_head

    with user_errors():
        check_outputs({"HEAD": head_paths(head)}, files=[("--out", target)], create=True)
        export_official(load_head(head), target)
    out.print(f"wrote {target}", markup=False)


@configured(EvaluateConfig, skip=("baseline",), prompt_sets={"decls": ("--prompt-set",)})
def ablate(
    config: EvaluateConfig,
    train: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Training cache(s).")],
    eval_caches: Annotated[
        list[Path], typer.Option("--eval", exists=True, dir_okay=False, help="Evaluation cache (repeatable).")],
    grid: Annotated[
        str, typer.Option(help="Space-separated NAME=V1,V2 lists, e.g. 'lr=1e-3,1e-2 epochs=5,10 head=linear,mlp "
        "instruction=paper,sha-…'.")],
    out_dir: Annotated[
        Path, typer.Option(file_okay=False, help="Where heads, per-run results and the table go; finished runs here "
        "are reused.")] = Path("ablation"),
    teacher_key: GROUP_OPTIONS.teacher_key = CacheGroups.teacher_key,
    instruction: GROUP_OPTIONS.instruction = CacheGroups.instruction,
) -> None:
    """Fit-head + evaluate over a Cartesian grid; runs already in OUT_DIR are reused.

    --clip-key, --teacher-key and --instruction choose the groups of every run (unless the grid varies them);
    each head is evaluated on the image key it was trained on.
    """
    from expclip import ablate as grid_runs
    from expclip.reports import evaluation as report
    from expclip.reports import files
    from expclip.stages.shared.labels import read_label_map

    with user_errors():
        parsed = grid_runs.parse_grid(grid)
        if config.label_map:
            read_label_map(config.label_map)  # a bad map is refused before any file
        reused = [("--out-dir", out_dir / sub, ()) for sub in ("runs", "heads") if (out_dir / sub).is_dir()]
        check_outputs({"TRAIN": train, "--eval": eval_caches, "--label-map": _file(config.label_map)},
                      folders=[("--out-dir", out_dir, grid_runs.WRITES), *reused])  # reused: must take new runs
        runs = grid_runs.run_grid(
            train, eval_caches, parsed, out_dir, base=FitConfig(device=config.device), evaluation=config,
            select=vars(CacheGroups(clip_key=config.clip_key, teacher_key=teacher_key, instruction=instruction)),
        )
        rows = grid_runs.rows(runs)
        out.print(report.grid_table(rows))
        files.write_json(rows, out_dir / "ablation.json")
        files.write_csv(report.rows_table(rows), out_dir / "ablation.csv")
    reused = sum(r["reused"] for r in runs)
    out.print(f"{len(runs)} runs ({reused} reused); "
              f"table in {out_dir / 'ablation.csv'} and {out_dir / 'ablation.json'}", markup=False)


def _file(name: str | None) -> list[Path]:
    """A name-or-file option's file, when it names one (an input that an output must not replace)."""
    return [Path(name)] if name and Path(name).is_file() else []


def demo(
    workdir: Annotated[
        Path, typer.Option(file_okay=False, help="Where the demo writes data, models, caches and "
        "results.")] = Path("expclip-demo"),
) -> None:
    """The whole pipeline offline on synthetic faces and tiny encoders pre-trained on drawn faces (under a minute)."""
    from expclip.demo.walkthrough import REAL_RUN, SYNTHETIC, run_demo
    from expclip.reports import evaluation as report
    from expclip.reports import files

    with user_errors():
        check_outputs(folders=[("--workdir", workdir, ("**/*",))])
        run = run_demo(workdir)
        files.write_json(run.records, workdir / "results.json")
    for table in report.tables(run.records):
        out.print(table)
    out.print(SYNTHETIC, style="bold yellow", highlight=False, markup=False)
    for name, path in {**run.files, "results": workdir / "results.json"}.items():
        out.print(f"  {name:18} {path}", highlight=False, markup=False)
    out.print(REAL_RUN, highlight=False, markup=False)


for _name, _command in [("extract", extract), ("fit-head", fit_head), ("evaluate", evaluate), ("ablate", ablate),
                        ("run", cli_run.run), ("predict", cli_predict.predict), ("search", cli_neighbours.search),
                        ("audit", cli_neighbours.audit), ("demo", demo)]:
    app.command(_name)(_command)
app.add_typer(cache_app, name="cache")
app.add_typer(head_app, name="head")
