"""Reading weight files without running anything from them.

``.safetensors`` holds tensors and a JSON header only, so it is read as it is. A pickle-based file (``torch.save``:
``.bin``, ``.pt``, ``.pth``, ``.ckpt``) is read only by torch's weights-only unpickler, which builds tensors,
containers and numbers and refuses anything else (a ``__reduce__`` payload, a TorchScript archive) before it runs.
Whatever cannot be read so is refused with one line naming the file and why (:class:`UnsafeModelFile`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAFE_SUFFIXES = (".safetensors",)


class UnsafeModelFile(ValueError):
    """A model file that cannot be loaded without (possibly) running code from it: refused with one line."""


def load_tensors(path: str | Path, what: str) -> dict[str, Any]:
    """{name: tensor} from a ``.safetensors`` file, or from a pickle-based one through the weights-only unpickler;
    UnsafeModelFile (``what``: the setting it came from) for anything else."""
    import torch

    p = Path(path).expanduser()
    try:
        if p.suffix in SAFE_SUFFIXES:
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError for a pickle with more than data; a damaged file
        raise UnsafeModelFile(f"{what}: {p} is not a file of tensors that loads safely ({type(e).__name__}); give a "
                              f".safetensors file") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UnsafeModelFile(f"{what}: {p} holds more than named tensors; give a .safetensors file")
    return sd


def check_pickle(path: str | Path, what: str) -> None:
    """Start-up check of a pickle-based weights file, cheaply (storages memory-mapped, not read): UnsafeModelFile
    when the weights-only unpickler refuses it. A ``.safetensors`` file passes as it is."""
    import torch

    p = Path(path).expanduser()
    if p.suffix in SAFE_SUFFIXES:
        return
    try:
        try:
            torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            torch.load(str(p), map_location="cpu", weights_only=True)  # the old (not zip) torch.save format
    except Exception as e:  # noqa: BLE001 - UnpicklingError, a TorchScript archive, a damaged file
        raise UnsafeModelFile(f"{what}: {p} is not a file of tensors that loads safely ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); give a .safetensors file") from None


def weights_variant(folder: Path, prefer_fp16: bool = False) -> str | None | bool:
    """None for plain weights, "fp16" for the fp16 variant (when preferred or the only one), False when none.
    Only ``.safetensors`` count: a ``.bin`` is a pickle, which could run code when loaded, and is never read."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    plain = [n for n in names if n.endswith(".safetensors") and n.count(".") == 1]
    half = any(n.endswith(".fp16.safetensors") for n in names)
    if half and (prefer_fp16 or not plain):
        return "fp16"
    return None if plain else False


def check_weights(folder: Path, how: str, prefer_fp16: bool = False) -> str | None:
    """The weights variant of a component folder; FileNotFoundError when it has none, UnsafeModelFile (one line)
    when it has only pickled ``.bin`` weights."""
    variant = weights_variant(folder, prefer_fp16)
    if variant is not False:
        return variant
    if folder.is_dir() and any(p.suffix == ".bin" for p in folder.iterdir()):
        raise UnsafeModelFile(f"{folder}: only pickled weights (*.bin), which could run code when loaded; this "
                              f"program loads *.safetensors only; {how} (the hub's repos carry both)")
    raise FileNotFoundError(f"{folder}: no weights (*.safetensors); {how}")
