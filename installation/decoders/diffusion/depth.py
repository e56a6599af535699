"""Depth for a control of kind ``depth``: a transformers depth-estimation model the user supplies (DPT, Depth
Anything: ``AutoModelForDepthEstimation`` and its image processor, from a local folder with ``.safetensors`` weights
only, never downloaded), run on the decoder's device when the control's source image changes.

Its output is what diffusers' ControlNet depth examples feed the pipeline: the predicted depth resized to the
control's size by the model's own post-processing (the ``depth-estimation`` pipeline's), min-max normalised to 0..1,
as the three channels of the conditioning image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

HOW = "a transformers depth-estimation model (DPT, Depth Anything) saved with .safetensors weights"


def check_depth_model(folder: Path, what: str) -> None:
    """A depth-estimation folder with its image processor and safe weights, and no code of its own (FileNotFoundError
    or ValueError, one line naming it)."""
    from ..weights import check_weights

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what}: no such depth model folder {folder} (config.json missing; {HOW})")
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{what}: depth model folder {folder} has no preprocessor_config.json (its image "
                                "processor; save_pretrained writes it)")
    cfg = json.loads((folder / "config.json").read_text())
    if "auto_map" in cfg:
        raise ValueError(f"{what}: depth model folder {folder} names code of its own (auto_map), which is never run; "
                         f"{HOW}")
    check_weights(folder, HOW)


class DepthEstimator:
    """One depth model on a device: :meth:`__call__` maps an RGB uint8 image to its normalised depth."""

    def __init__(self, folder: str | Path, device: Any, dtype: Any) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        folder = Path(folder).expanduser()
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                            trust_remote_code=False, dtype=dtype)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype

    def __call__(self, rgb: np.ndarray, width: int, height: int) -> Any:
        """The depth of an HxWx3 uint8 RGB image at (height, width), 0..1 (float32 [height, width] on the device;
        all zeros when the prediction is flat)."""
        import torch

        with torch.inference_mode():
            inputs = self.processor(images=rgb, return_tensors="pt").to(self.device, self.dtype)
            out = self.model(**inputs)
            out["predicted_depth"] = out.predicted_depth.float()  # resized and normalised in float32
            depth = self.processor.post_process_depth_estimation(out, [(height, width)])[0]["predicted_depth"]
            if tuple(depth.shape) != (height, width):  # a processor whose sizes mean the source's (ZoeDepth)
                depth = torch.nn.functional.interpolate(depth.reshape(1, 1, *depth.shape[-2:]), size=(height, width),
                                                        mode="bicubic", align_corners=False)[0, 0]
            lo, span = depth.min(), depth.max() - depth.min()
            return torch.where(span > 0, (depth - lo) / span, torch.zeros_like(depth))
