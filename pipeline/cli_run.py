"""`expclip run PRESET`: a thin command over expclip.preset_run (registered by expclip.cli), and its Table 2."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from expclip import presets
from expclip.base.errors import ExpclipError
from expclip.console import err, escape, out, user_errors
from expclip.options import help_of, options
from expclip.stages.extract.config import ExtractConfig

XO = options(ExtractConfig)
OVERRIDE = "Instead of the preset's (for tests or other checkpoints; the run is then not the paper's)."


def run(
    preset: Annotated[str, typer.Argument(help=f"A preset ({', '.join(presets.names())}) or a preset JSON file.")],
    data_root: Annotated[
        Path,
        typer.Option(
            file_okay=False, help="Folder holding the datasets as the preset lays them out (--check lists where)."
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", file_okay=False, help="Caches, heads and results; what is already there is reused.")
    ] = Path("expclip-runs"),
    check: Annotated[
        bool, typer.Option("--check", help="Only list where each dataset is expected and whether it is there.")
    ] = False,
    clip_model: Annotated[
        Optional[str], typer.Option(help=f"CLIP model name, local-dir:PATH or hf-hub:ORG/REPO. {OVERRIDE}")
    ] = None,
    clip_pretrained: Annotated[
        Optional[str], typer.Option(help=f"With --clip-model: {help_of(ExtractConfig, 'clip_pretrained')}")
    ] = None,
    teacher: Annotated[Optional[str], typer.Option(help=f"Teacher HF id or folder. {OVERRIDE}")] = None,
    fit: Annotated[
        Optional[str], typer.Option(help=f"Head settings, e.g. 'batch_size=64 epochs=1'. {OVERRIDE}")
    ] = None,
    device: XO.device = ExtractConfig.device,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Encoder batch (default: extract's).")] = None,
    num_workers: Annotated[Optional[int], typer.Option(min=0, help="DataLoader workers (default: extract's).")] = None,
) -> None:
    """The paper's run in one command: check the data root, extract, fit-head, evaluate, Table 2 beside the paper."""
    from expclip.preset_run import require_complete, run_preset, survey

    with user_errors():
        chosen = presets.load(preset)
        if check:
            planned = survey(chosen, data_root)
            out.print(layout_table(chosen.name, data_root, planned))
            require_complete(planned, data_root)
            return
        given = {"clip_model": clip_model, "clip_pretrained": clip_pretrained, "teacher": teacher,
                 "batch_size": batch_size, "num_workers": num_workers}
        result = run_preset(
            chosen,
            data_root,
            out_dir,
            extract_overrides={k: v for k, v in given.items() if v is not None},
            fit_overrides=_fit_settings(fit) if fit else None,
            device=device,
            say=lambda line: err.print(escape(line), highlight=False),
        )
    out.print(table2(result))
    out.print(f"wrote {result['results']} ({result['seconds']:.1f} s)", highlight=False, markup=False)


def _fit_settings(text: str) -> dict:
    """`--fit 'batch_size=64 epochs=1'` as FitConfig values, typed as ablate's grid types them (one value each)."""
    from expclip.ablate import parse_grid

    try:
        grid = parse_grid(text)
    except ExpclipError as e:
        raise ExpclipError(str(e).replace("--grid", "--fit", 1)) from None
    several = [k for k, v in grid.items() if len(v) != 1]
    if several:
        raise ExpclipError(f"--fit: give one value for {', '.join(several)}")
    return {k: v[0] for k, v in grid.items()}


def layout_table(name: str, data_root: Path, planned: list) -> Table:
    """Where each source of the preset is expected under the data root, and whether it is there."""
    table = Table(title=escape(f"{name}: expected under {data_root}"))
    for column in ("dataset", "kind", "path", "expected", "status"):
        table.add_column(column)
    for p in planned:
        status = "[red]" + escape(p.problem) + "[/]" if p.problem else f"[green]ok[/] ({len(p.source.items)} items)"
        table.add_row(
            escape(p.label),
            p.dataset.kind,
            escape(str(p.path.relative_to(data_root))),
            escape(p.dataset.layout),
            status,
        )
    return table


def _pair(uar: float | None, war: float | None, form: str) -> str:
    return "—" if uar is None else f"{uar:{form}} / {war:{form}}"


def table2(result: dict) -> Table:
    """Table 2: per dataset, plain CLIP and Exp-CLIP measured here beside the paper, UAR / WAR (%), difference."""
    table = Table(title=f"Table 2, {escape(result['preset'])} (CLIP {result['paper_column']}), prompt set "
                        f"{result['table_prompt_set']}: zero-shot UAR / WAR (%), here vs the paper")
    table.add_column("dataset")
    for method in ("CLIP", "Exp-CLIP"):
        for what in ("here", "paper", "Δ"):
            table.add_column(f"{method} {what}", justify="right")
    for dataset in dict.fromkeys(r["dataset"] for r in result["table2"]):
        cells = []
        for method in ("clip", "exp-clip"):
            r = next(r for r in result["table2"] if (r["dataset"], r["method"]) == (dataset, method))
            cells += [_pair(r["uar"], r["war"], ".2f"), _pair(r["paper_uar"], r["paper_war"], ".2f"),
                      _pair(r["delta_uar"], r["delta_war"], "+.2f")]
        folds = next(r["folds"] for r in result["table2"] if r["dataset"] == dataset)
        table.add_row(dataset + (f" (mean of {folds} folds)" if folds > 1 else ""), *cells)
    changed = {k: v for k, v in result["overrides"].items() if v and k != "device"}
    if changed:
        table.caption = f"overrides {escape(str(changed))}: not the paper's configuration"
    return table
