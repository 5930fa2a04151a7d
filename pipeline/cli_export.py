"""`expclip cache export`: a thin command over expclip.reports.export (registered in expclip.cli)."""

from pathlib import Path
from typing import Annotated

import typer

from expclip.console import out, user_errors
from expclip.options import GROUP_OPTIONS
from expclip.output_paths import check_outputs
from expclip.stages.shared.common_settings import CacheGroups


def export(
    cache: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A cache file.")],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder to write the export into.")],
    clip_key: GROUP_OPTIONS.clip_key = CacheGroups.clip_key,
    teacher: Annotated[bool, typer.Option("--teacher", help="Also write the teacher features.")] = False,
    teacher_key: GROUP_OPTIONS.teacher_key = CacheGroups.teacher_key,
    instruction: GROUP_OPTIONS.instruction = CacheGroups.instruction,
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
