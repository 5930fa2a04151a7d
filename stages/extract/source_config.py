"""How `expclip extract` reads SOURCE: what it is, where its relative paths start, a clip's frames, its dataset
name. Not ExtractConfig's fields: they choose the items, not how they are encoded (data only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expclip.base.settings import check_choices, setting
from expclip.stages.shared import protocol
from expclip.stages.shared.vocabulary import AUTO

SOURCE_TYPES = (AUTO, "folder", "list", "clips", "shards")


@dataclass
class SourceConfig:
    """Everything extract can be told about SOURCE; each default, help line and choice list is stated here once."""

    source_type: str = setting(AUTO, "What SOURCE is; auto decides from the path.", choices=SOURCE_TYPES)
    root: Path | None = setting(None, "Folder that list paths are relative to (or replaces --strip-prefix).")
    strip_prefix: str | None = setting(None, "Prefix of a clip list's absolute paths to replace by --root.")
    frames: int = setting(protocol.DEFAULT_FRAMES, f"Frames sampled per clip, 1 to {protocol.MAX_FRAMES}.")
    dataset: str | None = setting(None, "Dataset name (protocol names set the class count of clip lists).")
    label_field: str | None = setting(
        None, "Tar shards: the .json members' field holding the label (default: .cls members)."
    )

    def check(self) -> None:
        """Refuse a source type outside its choices or a frame count outside 1..MAX_FRAMES, naming the option."""
        check_choices(self)
        protocol.check_frames(self.frames)
