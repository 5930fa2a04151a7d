"""`expclip run PRESET`: a thin command over expclip.preset_run (registered by expclip.cli), and its Table 2."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from expclip import presets
from expclip.console import err, escape, out, user_errors
from expclip.options import configured
from expclip.run_config import RunConfig


@configured(RunConfig, data_root={"file_okay": False}, out={"decls": ("--out",), "file_okay": False},
            check_only={"decls": ("--check",)}, batch_size={"min": 1}, num_workers={"min": 0})
def run(
    config: RunConfig,
    preset: Annotated[str, typer.Argument(help=f"A preset ({', '.join(presets.names())}) or a preset JSON file.")],
) -> None:
    """The paper's run in one command: check the data root, extract, fit-head, evaluate, Table 2 beside the paper."""
    from expclip.preset_run import require_complete, run_preset, survey

    with user_errors():
        chosen = presets.load(preset)
        if config.check_only:
            planned = survey(chosen, config.data_root)
            out.print(layout_table(chosen.name, config.data_root, planned))
            require_complete(planned, config.data_root)
            return
        result = run_preset(
            chosen,
            config.data_root,
            config.out,
            extract_overrides=config.extract_overrides(),
            fit_overrides=config.fit_overrides(),
            device=config.device,
            say=lambda line: err.print(escape(line), highlight=False),
        )
    out.print(table2(result))
    out.print(f"wrote {result['results']} ({result['seconds']:.1f} s)", highlight=False, markup=False)


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
