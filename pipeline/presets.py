"""The paper's runs as data: `presets/NAME.json`, a registry like open_clip's model configs.

A preset holds everything a run needs but the data: the encoders (ExtractConfig
fields), the head's hyper-parameters (FitConfig fields), the frames per clip,
the training folder and the evaluation sets (where each lies under a data root,
which SOURCE kind it is, its label map), the prompt sets scored, and which one
the report sets beside the paper's Table 2. `"extends": "_paper"` reads a
shared part first; the file's own keys replace the part's (objects key by key),
so the three paper presets state only their CLIP model. Files whose names start
with `_` are such parts or packaged reference data, never presets. Data only:
reading a preset imports no torch, so `expclip --help` lists them fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from expclip.base.errors import ExpclipError
from expclip.base.reading import read_json
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.extract.source_config import SOURCE_TYPES
from expclip.stages.fit_head.config import FitConfig
from expclip.stages.shared import protocol
from expclip.stages.shared.labels import builtin_label_maps

FOLD = "{fold}"  # stands for the fold number (1..folds) in a dataset's source path
KEYS = ("description", "extract", "fit", "frames", "training", "evaluation", "prompt_sets", "report")
REPORT_KEYS = ("paper_results", "prompt_set", "why")
PAPER_ROWS = {"clip": "CLIP", "exp-clip": "Exp-CLIP"}  # evaluate's method -> the paper results' row


@dataclass(frozen=True)
class Dataset:
    """One dataset of a preset and where it lies under the data root."""

    name: str  # evaluation sets: the protocol's name (RAFDB, DFEW, ...), recorded in the cache by extract
    kind: str  # a SOURCE kind of `expclip extract`: folder, list or clips
    source: str  # relative to the data root; `{fold}` stands for the fold number
    layout: str  # what must be there, in words (quoted by the missing-data error and --check)
    folds: int = 1  # the sources `{fold}` = 1..folds are evaluated one by one and their UAR/WAR averaged
    label_map: str | None = None  # built-in label map naming numeric class names (rafdb, affectnet)
    root: str | None = None  # clip lists: the folder under the data root that replaces strip_prefix
    strip_prefix: str | None = None  # clip lists: the prefix of the official lists' absolute paths

    def sources(self) -> list[tuple[int | None, str]]:
        """(fold, source relative to the data root) of each cache the dataset needs; fold None when it has one."""
        if self.folds == 1:
            return [(None, self.source)]
        return [(k, self.source.replace(FOLD, str(k))) for k in range(1, self.folds + 1)]


@dataclass(frozen=True)
class Preset:
    """A preset as the stages take it; `data` is the merged JSON, recorded in the results for provenance."""

    name: str
    description: str
    extract: ExtractConfig
    fit: FitConfig
    frames: int
    training: Dataset
    evaluation: tuple[Dataset, ...]
    prompt_sets: tuple[str, ...]
    report: dict[str, str]
    data: dict


def _folder() -> Traversable:
    return resources.files("expclip").joinpath("presets")


def names() -> list[str]:
    """The packaged presets (`expclip run NAME`)."""
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".json") and not p.name.startswith("_"))


def _read(path: Traversable | Path) -> dict:
    data = read_json(path, "preset")
    if not isinstance(data, dict):
        raise ExpclipError(f"{path}: a preset is a JSON object")
    return data


def _merged(path: Traversable | Path, seen: tuple[str, ...] = ()) -> dict:
    """The file's keys over those of the part it extends (looked up beside it, then among the packaged parts)."""
    own = _read(path)
    part = own.pop("extends", None)
    if part is None:
        return own
    if not isinstance(part, str) or not part or part in (".", "..") or Path(part).name != part or "\\" in part:
        raise ExpclipError(f"{path}: \"extends\": {part!r} is not the name of a part: write the stem of a JSON file "
                           "beside the preset or of a packaged part, e.g. \"_paper\"; paths are not followed")
    if part in seen:
        raise ExpclipError(f"{path}: \"extends\": {part!r} extends itself")
    beside, packaged = Path(str(path)).with_name(f"{part}.json"), _folder().joinpath(f"{part}.json")
    if not beside.is_file() and not packaged.is_file():
        raise ExpclipError(f"{path}: \"extends\": no {part}.json beside it, nor a packaged part of that name")
    base = _merged(beside if beside.is_file() else packaged, (*seen, part))
    return {**base, **{k: {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                       for k, v in own.items()}}


def load(name: str) -> Preset:
    """A packaged preset by name, or a preset JSON file (which may extend the packaged `_paper`)."""
    if name in names():
        path: Traversable | Path = _folder().joinpath(f"{name}.json")
    elif name.endswith(".json") and Path(name).is_file():
        path = Path(name)
    else:
        raise ExpclipError(f"preset {name!r}: not a preset JSON file, nor one of {', '.join(names())}")
    data = _merged(path)
    return _preset(Path(str(path)).stem, data, path)


def _preset(name: str, data: dict, where: Any) -> Preset:
    """Check every key against what the stages accept; errors name the file and list the choices."""
    _known(where, "", data, KEYS)
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise ExpclipError(f"{where}: lacks {', '.join(missing)}")
    for key in ("extract", "fit", "training", "report"):
        _shaped(where, key, data[key], dict, "a JSON object")
    for key in ("evaluation", "prompt_sets"):
        _shaped(where, key, data[key], list, "a JSON list")
    _known(where, "report.", data["report"], REPORT_KEYS)
    extract = _config(ExtractConfig, data["extract"], where, "extract")
    fit_values = {k: tuple(v) if k == "milestones" and isinstance(v, list) else v for k, v in data["fit"].items()}
    fit = _config(FitConfig, fit_values, where, "fit")
    training = _dataset(data["training"], where, "training")
    evaluation = tuple(_dataset(d, where, f"evaluation[{i}]") for i, d in enumerate(data["evaluation"]))
    unknown = [d.name for d in evaluation if d.name not in protocol.dataset_classes()]
    if unknown:
        raise ExpclipError(f"{where}: evaluation sets {unknown} are not protocol datasets "
                           f"({', '.join(protocol.dataset_classes())})")
    sets = tuple(data["prompt_sets"])
    bad = [s for s in sets if not isinstance(s, str) or s not in protocol.prompt_sets()]
    if bad or data["report"].get("prompt_set") not in sets:
        raise ExpclipError(f"{where}: prompt_sets and report.prompt_set must be among the protocol's "
                           f"({', '.join(protocol.prompt_sets())}) and report.prompt_set among prompt_sets")
    if not _folder().joinpath(str(data["report"].get("paper_results"))).is_file():
        raise ExpclipError(f"{where}: report.paper_results names no packaged file in {_folder()}")
    frames = protocol.check_frames(data["frames"], f"{where}: frames")
    return Preset(name, str(data["description"]), extract, fit, frames, training, evaluation, sets,
                  dict(data["report"]), data)


def _shaped(where: Any, key: str, value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise ExpclipError(f"{where}: {key} must be {what}, not {json.dumps(value)}")


# A field's annotation (the dataclasses' own, as text) -> the JSON values it takes; a path is a string.
_JSON_TYPES = {"str": (str,), "Path": (str,), "int": (int,), "float": (int, float), "None": (type(None),)}


def _typed(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a config field's annotation (`int | None`, `tuple[int, ...]`; no bool for numbers)."""
    if annotation.startswith("tuple[int"):
        return isinstance(value, tuple) and all(_typed(v, "int") for v in value)
    kinds = tuple(k for name in annotation.split(" | ") for k in _JSON_TYPES.get(name, (object,)))
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _known(where: Any, prefix: str, data: dict, valid: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ExpclipError(f"{where}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                           f"valid: {', '.join(prefix + k for k in valid)}")


def _fields(kind: type, values: dict, where: Any, section: str) -> None:
    """Refuse a name that is not a field of the dataclass `kind`, or a value of another type than its field's."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(kind)}
    _known(where, f"{section}.", values, tuple(fields))
    for name, value in values.items():
        if not _typed(value, fields[name]):
            raise ExpclipError(f"{where}: {section}.{name} {value!r} is not of type {fields[name]}")


def _config(kind: type, values: dict, where: Any, section: str) -> Any:
    _fields(kind, values, where, section)
    config = kind(**values)
    try:
        config.check()
    except ExpclipError as e:
        raise ExpclipError(f"{where}: {section}: {e}") from None
    return config


def _dataset(values: Any, where: Any, section: str) -> Dataset:
    _shaped(where, section, values, dict, "a JSON object")
    _fields(Dataset, values, where, section)
    try:
        found = Dataset(**values)
    except TypeError:
        raise ExpclipError(f"{where}: {section} needs name, kind, source and layout") from None
    for field in ("source", "root"):
        value = getattr(found, field)
        if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts):
            raise ExpclipError(f"{where}: {section}.{field} {value!r} must be a path relative to the data root "
                               "(not absolute, no '..'): --data-root says where the datasets are")
    if found.kind not in SOURCE_TYPES[1:]:
        raise ExpclipError(f"{where}: {section}.kind {found.kind!r} is not one of {', '.join(SOURCE_TYPES[1:])}")
    if (found.folds > 1) != (FOLD in found.source) or found.folds < 1:
        raise ExpclipError(f"{where}: {section}: a source with {FOLD} needs folds > 1, and folds > 1 needs {FOLD}")
    if found.label_map is not None and found.label_map not in builtin_label_maps():
        raise ExpclipError(f"{where}: {section}.label_map {found.label_map!r} is not one of "
                           f"{', '.join(builtin_label_maps())}")
    if found.strip_prefix is not None and found.root is None:
        raise ExpclipError(f"{where}: {section}.strip_prefix needs root (the folder that replaces it)")
    return found


def paper_numbers(preset: Preset) -> dict[str, dict[str, tuple[float, float]]]:
    """method (clip, exp-clip) -> dataset -> (UAR, WAR) in the paper's Table 2 for the preset's CLIP model
    (empty for a model the paper does not report, e.g. a preset file of one's own)."""
    table = _read(_folder().joinpath(preset.report["paper_results"]))
    column = preset.extract.clip_model
    return {method: {d: (float(u), float(w)) for d, (u, w) in zip(table["datasets"], table[row][column], strict=True)}
            for method, row in PAPER_ROWS.items() if column in table[row]}
