"""`expclip cache export`: a thin command over expclip.reports.export (registered in expclip.cli)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from expclip.console import out, user_errors
from expclip.output_paths import check_outputs


def export(
    cache: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A cache file.")],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder to write the export into.")],
    clip_key: Annotated[Optional[str], typer.Option(help="Image key when the cache holds several CLIPs.")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="Also write the teacher features.")] = False,
    teacher_key: Annotated[Optional[str], typer.Option(help="Teacher key when there are several.")] = None,
    instruction: Annotated[Optional[str], typer.Option(help="Instruction key when there are several.")] = None,
) -> None:
    """Features as clip-retrieval writes them (img_emb/, metadata/, text_emb/), for embedding-reader and autofaiss."""
    from expclip.reports.export import WRITES
    from expclip.reports.export import export as write_export

    with user_errors():
        check_outputs({"CACHE": [cache]}, folders=[("--out", out_dir, WRITES)])
        record = write_export(cache, out_dir, clip_key=clip_key, teacher=teacher, teacher_key=teacher_key,
                              instruction=instruction)
    out.print(f"wrote {out_dir}: {record['rows']} image rows, {record['text_rows']} prompt rows"
              + (f" (left out {record['items_without_features']} items without features)"
                 if record["items_without_features"] else ""), markup=False)
