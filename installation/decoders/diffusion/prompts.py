"""Prompts: each text encoded once (an LRU cache), the frame's weighted set read from extras and the bus, and the
weighted blend (lerp or slerp) of their embeddings."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any, Mapping

import torch

from .settings import MAX_PROMPT_CHARS, DiffusionSettings, bounded

log = logging.getLogger(__name__)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation along the last axis (per token), falling back to lerp for parallel vectors."""
    a32, b32 = a.float(), b.float()
    na, nb = a32.norm(dim=-1, keepdim=True), b32.norm(dim=-1, keepdim=True)
    ua, ub = a32 / na.clamp_min(1e-8), b32 / nb.clamp_min(1e-8)
    dot = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    safe = so.abs() > 1e-4
    wa = torch.where(safe, torch.sin((1 - t) * omega) / so.where(safe, torch.ones_like(so)), torch.full_like(so, 1 - t))
    wb = torch.where(safe, torch.sin(t * omega) / so.where(safe, torch.ones_like(so)), torch.full_like(so, t))
    direction = wa * ua + wb * ub
    norm = (1 - t) * na + t * nb
    out = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8) * norm
    return out.to(a.dtype)


def blend_tensors(tensors: list[torch.Tensor], weights: list[float], mode: str) -> torch.Tensor:
    """Weighted blend: normalised lerp, or cumulative slerp (exact slerp for two items)."""
    total = float(sum(weights))
    if mode == "lerp" or len(tensors) == 1:
        out = sum(t.float() * (w / total) for t, w in zip(tensors, weights))
        return out.to(tensors[0].dtype)
    acc, cum = None, 0.0
    for t, w in zip(tensors, weights):
        if w <= 0:
            continue
        acc = t if acc is None else slerp(acc, t, w / (cum + w))
        cum += w
    return acc


def prompt_set(settings: DiffusionSettings, params: Mapping[str, float],
               extras: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    """The weighted prompt set for this frame: extras (validated) or settings, weights moved by the bus."""
    raw = extras.get("prompts")
    pairs: list[tuple[str, float]] = []
    if raw is not None:
        try:
            for text, weight in raw:
                if isinstance(text, str):
                    pairs.append((text[:MAX_PROMPT_CHARS], float(weight)))
        except (TypeError, ValueError):
            log.warning("diffusion: ignoring malformed extras['prompts']")
            pairs = []
    if not pairs:
        pairs = list(settings.prompts) or [("", 1.0)]
    out = []
    for i, (text, weight) in enumerate(pairs):
        w = max(weight, 0.0) if math.isfinite(weight) else 0.0
        out.append((text, w * bounded(params, f"prompt.{i}.gain", 1.0, 0.0, 1e6)))
    return tuple(out)


class PromptEncoder:
    """Text -> (prompt embeds [1,L,D], pooled [1,P] or None), through an LRU cache of ``size`` texts."""

    def __init__(self, tokenizers: list, text_encoders: list, sdxl: bool, device: torch.device, dtype: torch.dtype,
                 size: int, counters: dict[str, int]) -> None:
        self.tokenizers, self.text_encoders = tokenizers, text_encoders
        self.sdxl = sdxl
        self.device, self.dtype = device, dtype
        self.size = size
        self.counters = counters  # the decoder's: prompt_cache_hits / prompt_cache_misses
        self.calls = 0
        max_len = int(tokenizers[0].model_max_length)
        self.max_len = 77 if max_len > 10000 else max_len
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    @torch.inference_mode()
    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            self.counters["prompt_cache_hits"] += 1
            return hit
        self.counters["prompt_cache_misses"] += 1
        self.calls += 1
        hidden, pooled = [], None
        for i, (tok, enc) in enumerate(zip(self.tokenizers, self.text_encoders)):
            ids = tok([text], padding="max_length", max_length=self.max_len, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            if self.sdxl:
                out = enc(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                if i == 1:
                    pooled = out.text_embeds
            else:
                hidden.append(enc(ids)[0])
        emb = torch.cat(hidden, dim=-1).to(self.dtype)
        entry = (emb, pooled.to(self.dtype) if pooled is not None else None)
        self._cache[text] = entry
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return entry

    def blend(self, prompts: tuple[tuple[str, float], ...], mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The blended (embeds, pooled) of a weighted set (all-zero weights: the empty prompt)."""
        live = [(t, w) for t, w in prompts if w > 0]
        if not live:
            live = [("", 1.0)]
        entries = [self.encode(t) for t, _ in live]
        weights = [w for _, w in live]
        emb = blend_tensors([e[0] for e in entries], weights, mode)
        pooled = blend_tensors([e[1] for e in entries], weights, mode) if entries[0][1] is not None else None
        return emb, pooled

    def clear(self) -> None:
        self._cache.clear()
