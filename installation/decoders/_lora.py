"""LoRA applied by hand to a UNet, with one live scale tensor per LoRA.

Why by hand and not diffusers' ``load_lora_weights``: that needs peft, and its ``set_adapters`` changes Python
floats, which a captured CUDA graph would bake in. Here each LoRA's scale is a 0-dim device tensor that the graph
reads, so moving ``lora.<name>.scale`` on the bus is one tiny in-place fill, never a re-capture.

Formats read: diffusers/peft (``<module>.lora_A.weight`` / ``lora_B.weight``, optional ``unet.`` prefix), old
diffusers attention processors (``...processor.to_q_lora.down.weight``), and kohya with diffusers module names
(``lora_unet_down_blocks_0_..._to_q.lora_down.weight`` + ``.alpha``). Text-encoder keys are skipped with a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from .weights import load_tensors

log = logging.getLogger(__name__)


class LoraWrapped(nn.Module):
    """A Linear or Conv2d plus a sum of low-rank deltas, each multiplied by its LoRA's live scale tensor."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.scales: list[torch.Tensor] = []  # shared 0-dim tensors, one per LoRA name (not owned)
        self.factors: list[float] = []  # alpha / rank, fixed per file

    def add(self, down: nn.Module, up: nn.Module, scale: torch.Tensor, factor: float) -> None:
        self.downs.append(down)
        self.ups.append(up)
        self.scales.append(scale)
        self.factors.append(factor)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        for down, up, scale, factor in zip(self.downs, self.ups, self.scales, self.factors):
            out = out + up(down(x)) * (scale * factor)
        return out


def _group(sd: dict[str, torch.Tensor], flat_names: dict[str, str]) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """Map keys to {module name: {"down", "up", "alpha"}}; returns the groups and the number of skipped keys."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    skipped = 0
    for key, value in sd.items():
        k = key
        if k.startswith(("text_encoder", "lora_te", "te_", "te1", "te2")):
            skipped += 1
            continue
        for prefix in ("unet.", "base_model.model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        role = None
        if k.startswith("lora_unet_"):
            m = re.match(r"lora_unet_(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$", k)
            if not m or m.group(1) not in flat_names:
                skipped += 1
                continue
            module = flat_names[m.group(1)]
            role = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[m.group(2)]
        else:
            m = re.match(r"(.+)\.(lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up)\.weight$", k)
            if m:
                module = m.group(1)
                role = "down" if m.group(2) in ("lora_A", "lora.down", "lora_down") else "up"
            elif k.endswith(".alpha"):
                module, role = k[: -len(".alpha")], "alpha"
            else:
                skipped += 1
                continue
            # Old attention-processor names: "attn1.processor.to_q_lora" -> "attn1.to_q".
            pm = re.match(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora$", module)
            if pm:
                module = f"{pm.group(1)}.{pm.group(2)}" + (".0" if pm.group(2) == "to_out" else "")
        groups.setdefault(module, {})[role] = value
    return groups, skipped


def apply_loras(unet: nn.Module, loras: tuple[tuple[str, str], ...], device: torch.device,
                dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Attach each (path, name) LoRA to ``unet``; return {name: live scale tensor (starts at 1.0)}."""
    scales: dict[str, torch.Tensor] = {}
    if not loras:
        return scales
    modules = dict(unet.named_modules())
    flat_names = {name.replace(".", "_"): name for name in modules}
    for path_str, name in loras:
        path = Path(path_str).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"LoRA {name!r}: file {path} not found (a .safetensors LoRA for this model)")
        groups, skipped = _group(load_tensors(path, f"LoRA {name!r}"), flat_names)
        scale = torch.ones((), device=device, dtype=dtype)
        applied = 0
        for module_name, parts in groups.items():
            if "down" not in parts or "up" not in parts:
                continue
            target = modules.get(module_name)
            if isinstance(target, LoraWrapped):
                target = target.base
            if not isinstance(target, (nn.Linear, nn.Conv2d)):
                skipped += 1
                continue
            down_w, up_w = parts["down"], parts["up"]
            rank = down_w.shape[0]
            factor = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
            if isinstance(target, nn.Linear):
                down = nn.Linear(down_w.shape[1], rank, bias=False)
                up = nn.Linear(rank, up_w.shape[0], bias=False)
                down.weight.data = down_w.reshape(rank, -1).clone()
                up.weight.data = up_w.reshape(up_w.shape[0], rank).clone()
            else:
                if down_w.ndim == 2:  # linear LoRA on a 1x1 conv
                    down_w, up_w = down_w[:, :, None, None], up_w[:, :, None, None]
                kh, kw = down_w.shape[2:]
                down = nn.Conv2d(down_w.shape[1], rank, (kh, kw), stride=target.stride,
                                 padding=target.padding if (kh, kw) != (1, 1) else 0, bias=False)
                up = nn.Conv2d(rank, up_w.shape[0], 1, bias=False)
                down.weight.data = down_w.clone()
                up.weight.data = up_w.clone()
            wrapped = modules[module_name]
            if not isinstance(wrapped, LoraWrapped):
                wrapped = LoraWrapped(target)
                parent_name, _, child = module_name.rpartition(".")
                setattr(modules[parent_name] if parent_name else unet, child, wrapped)
                modules[module_name] = wrapped
            wrapped.add(down.to(device, dtype), up.to(device, dtype), scale, factor)
            applied += 1
        if applied == 0:
            raise ValueError(f"LoRA {name!r} ({path}): no key matched a module of this UNet; is it for this model "
                             f"family? ({skipped} keys skipped)")
        if skipped:
            log.warning("LoRA %r: applied to %d modules, skipped %d keys (text encoder or unknown)", name, applied,
                        skipped)
        log.info("LoRA %r loaded from %s into %d modules", name, path, applied)
        scales[name] = scale
    return scales
