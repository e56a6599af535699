"""The show's archive: every change on the bus and a point per second of the show, kept in SQLite, so a performance
can be replayed exactly (``installation replay``), listed and exported (``installation archive``) and mapped
(``installation map``). See :mod:`.store` (the file), :mod:`.writer` (the part), :mod:`.replay` and :mod:`.maps`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..parts import PartContext, register


class ArchiveSettings(BaseModel):
    """``[archive]``: where the archive lives and what it keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    path: str = "archive"  # folder, relative to the config file; one file per show, named after the config file
    point_every: Annotated[float, Field(ge=0.05, le=3600)] = 1.0  # seconds of show time between two points
    batch_s: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0  # seconds between commits (the most a crash loses)
    max_mb: Annotated[float, Field(ge=0.1)] = 2000.0  # the file is kept under this size (old points thinned first)
    thumb: Annotated[int, Field(ge=16, le=1024)] = 96  # thumbnail long edge, pixels
    ticks: bool = True  # keep every tick's show time, so a replay walks the live timing exactly
    replay: str = ""  # an archive file (or FILE#SESSION) whose performance this run plays (`run --replay`)
    replay_loop: bool = True  # start the replayed performance again when it ends


@register("archive", table="archive", settings=ArchiveSettings, order=2)  # before the inputs: stops after them
def build(settings: ArchiveSettings, ctx: PartContext):
    if not settings.enabled and not settings.replay:
        return None
    from .writer import Archive

    return Archive(settings, ctx)


__all__ = ["ArchiveSettings"]
