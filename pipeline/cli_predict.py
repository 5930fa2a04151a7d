"""`expclip predict`: a thin command over expclip.stages.predict (registered by expclip.cli)."""

import glob
from pathlib import Path
from typing import Annotated, Optional

import typer

from expclip.console import err, escape, out, user_errors
from expclip.options import choice
from expclip.output_paths import head_paths, writable, writable_files
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.shared.clip_identity import recorded_pretrained
from expclip.stages.shared.vocabulary import (
    AUTO,
    BATCH_SIZES,
    DETECTORS,
    DEVICE_HELP,
    PRECISIONS,
    PREDICT_CLIP,
    PREDICT_EVERY,
    PREDICT_PROMPT_SET,
)


def predict(
    paths: Annotated[
        list[Path], typer.Argument(help="Image files, folders, video files or (with --frame-folders) frame folders.")
    ],
    head: Annotated[
        Optional[Path], typer.Option(help="A trained head (Exp-CLIP); without one, plain CLIP zero-shot.")
    ] = None,
    clip_model: Annotated[
        Optional[str],
        typer.Option(
            help=f"open_clip model, local-dir:PATH or hf-hub:ORG/REPO (default: the head's CLIP, else {PREDICT_CLIP})."
        ),
    ] = None,
    clip_pretrained: Annotated[
        Optional[str],
        typer.Option(help="Pretrained tag or weights file (default: the head's, else openai or the model's only tag)."),
    ] = None,
    classes: Annotated[
        Optional[str], typer.Option(help="Comma list of class names, any words (default: the 7 basic expressions).")
    ] = None,
    prompt_set: Annotated[
        str, typer.Option(help="Prompt set for the classes' prompts and templates.")
    ] = PREDICT_PROMPT_SET,
    detector: Annotated[
        choice(DETECTORS),
        typer.Option(
            help="haar: OpenCV's bundled cascade; yunet: --detector-model FILE.onnx; none: pre-cropped faces."
        ),
    ] = DETECTORS[0],
    detector_model: Annotated[
        Optional[Path], typer.Option(exists=True, dir_okay=False, help="YuNet ONNX file for --detector yunet.")
    ] = None,
    every: Annotated[
        str,
        typer.Option(
            help="Score every N-th frame of clips (10), or a frame every S seconds (0.5s) at the clip's frame rate; "
            "the whole clip always uses the paper's 16 frames."
        ),
    ] = PREDICT_EVERY,
    frame_folders: Annotated[
        bool, typer.Option("--frame-folders", help="Each folder given is one clip's frames (sorted).")
    ] = False,
    fps: Annotated[
        Optional[float], typer.Option(help="Frame folders' frame rate (per second): records get seconds.")
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = AUTO,
    batch_size: Annotated[
        Optional[int],
        typer.Option(min=1, help=f"Face crops per CLIP pass, across pictures and frames (default: extract's, "
                     f"{BATCH_SIZES['cuda']} on CUDA, {BATCH_SIZES['cpu']} on the CPU)."),
    ] = None,
    precision: Annotated[
        choice((AUTO, *PRECISIONS)), typer.Option(help="auto = bf16 autocast on CUDA, fp32 on the CPU (as extract).")
    ] = ExtractConfig.precision,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", dir_okay=False, help="Write the records as JSON.")
    ] = None,
    csv_out: Annotated[
        Optional[Path], typer.Option("--csv", dir_okay=False, help="Write one CSV row per record.")
    ] = None,
    annotate_dir: Annotated[
        Optional[Path],
        typer.Option("--annotate", file_okay=False, help="Write boxed pictures and video timelines here."),
    ] = None,
) -> None:
    """Expressions of the faces in photos and videos: {class: probability} per face, zero-shot."""
    from expclip.reports import files
    from expclip.reports import predictions as outputs
    from expclip.stages.predict.api import ZeroShotFER
    from expclip.stages.predict.records import check_clip_options, predict_inputs
    from expclip.stages.shared.heads import load_head

    with user_errors():
        read = {"INPUT": _files(paths, frame_folders), "--head": head_paths(head), "--detector-model": [detector_model]}
        writable_files([("--json", json_out), ("--csv", csv_out)], read)
        if annotate_dir is not None:
            names = outputs.annotation_names(paths, frame_folders=frame_folders)
            writable(annotate_dir, "--annotate", folder=True, inputs=read,
                     writes=[glob.escape(str(name)) for name in names.values()])
        check_clip_options(every, fps)  # refused before any model is loaded
        loaded = load_head(head) if head is not None else None
        recorded = loaded.clip if loaded is not None else {}
        model = ZeroShotFER(
            clip_model or recorded.get("model") or PREDICT_CLIP,
            clip_pretrained if clip_model or clip_pretrained else recorded_pretrained(recorded),
            head=loaded, classes=classes, prompt_set=prompt_set,
            detector=detector, detector_model=detector_model, device=device,
            transform=recorded.get("transform") or "model", precision=precision, batch_size=batch_size,
        )
        records, inputs = predict_inputs(model, paths, every=every, frame_folders=frame_folders, fps=fps)
        failed = [r for r in records if r["kind"] == "failed"]
        if len(failed) == len(records) and detector != "none":  # with none, every picture or frame read is a face
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


def _files(paths: list[Path], frame_folders: bool) -> list[Path]:
    """Every file predict reads from its INPUT arguments (an output must not replace one)."""
    from expclip.stages.predict.media import Clip, inputs

    found: list[Path] = []
    for item in inputs(paths, frame_folders=frame_folders):
        found += [item.path, *(item.frames or [])] if isinstance(item, Clip) else [item]
    return found

