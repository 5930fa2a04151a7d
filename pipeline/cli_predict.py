"""`expclip predict`: a thin command over expclip.stages.predict (registered by expclip.cli)."""

import glob
from pathlib import Path
from typing import Annotated, Optional

import typer

from expclip.console import err, escape, out, user_errors
from expclip.options import configured, csv_option, json_option
from expclip.output_paths import check_outputs, head_paths
from expclip.stages.predict.config import PredictConfig
from expclip.stages.shared.clip_identity import recorded_pretrained
from expclip.stages.shared.vocabulary import DEFAULT_CLIP


@configured(PredictConfig, detector_model={"exists": True, "dir_okay": False}, batch_size={"min": 1},
            frame_folders={"decls": ("--frame-folders",)})
def predict(
    config: PredictConfig,
    paths: Annotated[
        list[Path], typer.Argument(help="Image files, folders, video files or (with --frame-folders) frame folders.")
    ],
    head: Annotated[
        Optional[Path], typer.Option(help="A trained head (Exp-CLIP); without one, plain CLIP zero-shot.")
    ] = None,
    json_out: json_option("the records") = None,
    csv_out: csv_option("one row per record") = None,
    annotate_dir: Annotated[
        Optional[Path],
        typer.Option("--annotate", file_okay=False, help="Write boxed pictures and video timelines here."),
    ] = None,
) -> None:
    """Expressions of the faces in photos and videos: {class: probability} per face, zero-shot."""
    from expclip.reports import files
    from expclip.reports import predictions as outputs
    from expclip.stages.predict.api import ZeroShotFER
    from expclip.stages.predict.media import listing
    from expclip.stages.predict.records import check_clip_options, predict_inputs
    from expclip.stages.shared.heads import load_head

    with user_errors():
        listed = listing(paths, frame_folders=config.frame_folders)  # read by all three below: folders walked once
        read = {"INPUT": listed.files(), "--head": head_paths(head), "--detector-model": [config.detector_model]}
        names = outputs.annotation_names(listed) if annotate_dir else {}
        check_outputs(read, files=[("--json", json_out), ("--csv", csv_out)],
                      folders=[("--annotate", annotate_dir, [glob.escape(str(name)) for name in names.values()])])
        check_clip_options(config.every, config.fps)  # refused before any model is loaded
        loaded = load_head(head) if head is not None else None
        recorded = loaded.clip if loaded is not None else {}
        model = ZeroShotFER(
            config.clip_model or recorded.get("model") or DEFAULT_CLIP,
            config.clip_pretrained if config.clip_model or config.clip_pretrained else recorded_pretrained(recorded),
            head=loaded, classes=config.classes, prompt_set=config.prompt_set,
            detector=config.detector, detector_model=config.detector_model, device=config.device,
            transform=recorded.get("transform") or "model", precision=config.precision, batch_size=config.batch_size,
        )
        records, inputs = predict_inputs(model, listed, every=config.every, fps=config.fps)
        failed = [r for r in records if r["kind"] == "failed"]
        if len(failed) == len(records) and config.detector != "none":  # with none, every picture read is a face
            err.print("[yellow]no faces found[/] (pre-cropped faces: --detector none)", highlight=False)
        out.print(outputs.table(records))
        for r in failed:
            err.print(f"[yellow]skipped[/] {escape(r['file'])}: {escape(r['reason'])}", highlight=False)
        if failed:
            err.print(f"[yellow]{len(failed)} of {inputs} inputs skipped[/] (unreadable; their records say why)",
                      highlight=False)
        provenance = model.provenance(head)
        if json_out:
            files.write_json({"provenance": provenance, "records": records}, json_out)
        if csv_out:
            files.write_csv(outputs.csv_table(records, model.classes, provenance), csv_out)
        if annotate_dir:
            for written in outputs.annotate(records, model.classes, annotate_dir, names):
                err.print(f"wrote {written}", highlight=False, markup=False)

