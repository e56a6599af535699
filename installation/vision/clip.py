"""A CLIP model (open_clip) that embeds decoded frames and texts: L2-normalised float16 vectors.

Built from an architecture name and a local checkpoint file (or an open_clip pretrained tag, downloaded only when
online). Frames are preprocessed in torch straight from the decoder's uint8 RGB (resize the short side, centre crop,
the model's own mean and std), without a round trip through PIL. Text embeddings are computed once and cached.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .settings import DEFAULT_TAG, DOWNLOAD, VisionSettings, looks_like_file

log = logging.getLogger(__name__)

_CONFIG_LOCK = threading.Lock()


class WeightsMissing(FileNotFoundError):
    """The configured checkpoint is not on this machine (or a tag cannot be fetched offline)."""


def _offline(settings: VisionSettings) -> bool:
    return settings.offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def check_weights(settings: VisionSettings) -> None:
    """Raise :class:`WeightsMissing` (one line: the path and the download command) when the model cannot load."""
    if settings.model_config_file and not Path(settings.model_config_file).is_file():
        raise WeightsMissing(f"CLIP model config {settings.model_config_file} not found")
    w = settings.weights
    if not w:
        raise WeightsMissing("no CLIP weights: set [vision] weights to a checkpoint file; get one with "
                             + DOWNLOAD.format(model=settings.model, tag=DEFAULT_TAG, path="<that file>"))
    if looks_like_file(w):
        if not Path(w).is_file():
            raise WeightsMissing(f"CLIP weights {w} not found; get them with "
                                 + DOWNLOAD.format(model=settings.model, tag=DEFAULT_TAG, path=w))
        from ..decoders.weights import check_pickle

        check_pickle(w, "[vision] weights")  # a .bin/.pt is read by the weights-only unpickler only, or refused
    elif _offline(settings):
        raise WeightsMissing(f"CLIP weights: pretrained tag {w!r} needs a download but this run is offline; "
                             "set weights to a local file, got with "
                             + DOWNLOAD.format(model=settings.model, tag=w, path="<that file>"))


def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto" or (choice == "cuda" and not torch.cuda.is_available()):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


class ClipModel:
    """Image and text encoders of one open_clip model; ``embed_frames``/``embed_texts`` return float16 unit rows."""

    def __init__(self, settings: VisionSettings) -> None:
        import open_clip
        import torch

        check_weights(settings)
        self.settings = settings
        self.device = resolve_device(settings.device)
        name = settings.model
        if settings.model_config_file:
            with _CONFIG_LOCK:
                open_clip.add_model_config(settings.model_config_file)
            name = Path(settings.model_config_file).stem
        self.name = name
        # weights_only: a pickled checkpoint goes through torch's weights-only unpickler (open_clip's default too).
        model = open_clip.create_model(name, pretrained=settings.weights, device=self.device,
                                       precision="fp16" if self.device == "cuda" else "fp32", weights_only=True)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(name)
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = model.visual.image_size
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.dtype = next(model.parameters()).dtype
        self._mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device,
                                  dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=self.device,
                                 dtype=torch.float32).view(1, 3, 1, 1)
        self._texts: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.dim = int(self.embed_texts(["a"]).shape[1])
        log.info("CLIP %s on %s (%s), image %d px, %d-dim", name, self.device, settings.weights, self.size, self.dim)

    def preprocess(self, frames: Sequence[np.ndarray]):
        """uint8 HxWx3 frames -> the model's normalised input batch (short side resized, centre crop)."""
        import torch
        import torch.nn.functional as F

        out = []
        for rgb in frames:
            x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
            h, w = x.shape[-2:]
            scale = self.size / min(h, w)
            nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - self.size) // 2, (nw - self.size) // 2
            out.append(x[..., top:top + self.size, left:left + self.size])
        return ((torch.cat(out) - self._mean) / self._std).to(self.dtype)

    def embed_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised float16 image embeddings, one row per frame."""
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(self.preprocess(frames)).float()
        return _unit(feats.cpu().numpy())

    def embed_texts(self, texts: Iterable[str]) -> np.ndarray:
        """L2-normalised float16 text embeddings, computed once per text and cached."""
        import torch

        texts = list(texts)
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._texts))
            if todo:
                with torch.inference_mode():
                    feats = self.model.encode_text(self.tokenizer(todo).to(self.device)).float()
                for text, row in zip(todo, _unit(feats.cpu().numpy())):
                    self._texts[text] = row
            if not texts:
                return np.zeros((0, getattr(self, "dim", 0)), np.float16)
            return np.stack([self._texts[t] for t in texts])

    @property
    def cached_texts(self) -> int:
        return len(self._texts)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float16)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities of unit rows (computed in float32)."""
    return a.astype(np.float32) @ b.astype(np.float32).T


def vision_summary(settings: VisionSettings) -> str:
    """Load the model and embed one frame: "<model> on <device> from <weights>, <dim>-dim, <size> px, <ms> per frame"
    (for ``installation doctor``; raises what loading raises)."""
    import time

    model = ClipModel(settings)
    frame = np.zeros((model.size, model.size, 3), np.uint8)
    model.embed_frames([frame])
    t0 = time.perf_counter()
    model.embed_frames([frame])
    ms = (time.perf_counter() - t0) * 1000.0
    return (f"{model.name} on {model.device} from {settings.weights}, {model.dim}-dim, {model.size} px, "
            f"{ms:.1f} ms per frame")
