"""Crafted model files whose payload creates a marker file if anything runs it: the fixtures of the "no received file
runs code" tests. Each test also shows that the payload is live (an unsafe loader does create the marker), so a
marker that never appears means the program's loader refused it, not that the fixture was inert."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path


class Payload:
    """Unpickling this object opens (creates) ``marker``: what ``os.system`` would do in a real attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(marker: Path) -> bytes:
    """A plain pickle of the payload."""
    return pickle.dumps(Payload(marker))


def torch_saved(marker: Path, **tensors) -> bytes:
    """A torch.save file (zip) holding some tensors and the payload, as a checkpoint or weights file would."""
    import torch

    buf = io.BytesIO()
    torch.save({**tensors, "payload": Payload(marker)}, buf)
    return buf.getvalue()


def rewrite_zip(src: Path, dst: Path, change) -> Path:
    """Copy a zip archive, passing each (name, bytes) through ``change`` (which returns the new bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))
    return dst


def pt2_with_pickled_weight(src: Path, dst: Path, marker: Path, weight: str = "weight_0") -> Path:
    """The review's exploit: a torch.export archive with ``use_pickle: true`` set for one weight and that weight
    replaced by a pickle (torch.export.load unpickles it with weights_only=False)."""

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/model_weights_config.json"):
            cfg = json.loads(data)
            for entry in cfg["config"].values():
                if entry["path_name"] == weight:
                    entry["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("data/weights/" + weight):
            return pickled(marker)
        return data

    return rewrite_zip(src, dst, change)
