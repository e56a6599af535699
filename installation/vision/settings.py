"""The ``[vision]`` config table and a scene's ``[vision]`` table: what the CLIP bridge reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..inputs.prompt_guard import PromptGuardSettings

# The command printed when the checkpoint file is missing (run it on a machine with internet, then copy the file).
DOWNLOAD = ("python -c \"import open_clip; open_clip.create_model_and_transforms('{model}', "
            "pretrained='{tag}')\"  (then copy the .safetensors from ~/.cache/huggingface/hub to {path})")
DEFAULT_TAG = "laion2b_s34b_b79k"
SHIPPED_VOCABULARY = Path(__file__).resolve().parents[2] / "config" / "vocabulary.txt"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Concept(_Strict):
    """A weighted text (a hidden prompt)."""

    text: Annotated[str, Field(min_length=1, max_length=500)]
    weight: Annotated[float, Field(ge=0, le=10)] = 1.0


class VisionSettings(_Strict):
    """``[vision]``: a CLIP model beside the decoder that reads what it draws (describe, similarity, frame check)."""

    enabled: bool = False
    model: str = Field("ViT-B-32", description="an open_clip architecture name")
    model_config_file: str = Field("", description="JSON file of an architecture open_clip does not ship "
                                                    "(its stem is the model name); relative to the config")
    weights: str = Field("", description="a local checkpoint file (relative to the config), or an open_clip "
                                         "pretrained tag (used only when online)")
    offline: bool = Field(False, description="never download a pretrained tag (HF_HUB_OFFLINE=1 does the same)")
    every_n: Annotated[int, Field(ge=1, le=1000)] = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vocabulary: str = Field("", description="terms file (relative to the config; '' = the shipped "
                                             "config/vocabulary.txt); '[group]' lines start a group")
    top_k: Annotated[int, Field(ge=1, le=50)] = 5
    prompt_slots: Annotated[int, Field(ge=0, le=16)] = 4  # vision.similarity.<i> parameters
    blocked: tuple[str, ...] = Field((), description="concepts a frame may not show (the frame check); "
                                                     "empty = off")
    threshold: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.25  # cosine similarity above which a frame is held
    audit_log: str = Field("", description="append-only JSONL log of public prompts (relative to the config); "
                                           "'' = off")
    audit_max_bytes: Annotated[int, Field(ge=1024, le=1 << 34)] = 10_000_000
    audit_backups: Annotated[int, Field(ge=0, le=100)] = 5
    show_refusals: bool = Field(False, description="feedback /vision/refused and refused_count for artists who "
                                                   "want to show the boundary")
    prompt: PromptGuardSettings = PromptGuardSettings()  # guard on the describe loop's prompts

    def resolved(self, base: Path) -> "VisionSettings":
        """A copy with file paths made absolute against the config's folder ("" vocabulary: the shipped one)."""
        def fix(value: str) -> str:
            return str((base / Path(value).expanduser()).resolve()) if value else value

        update = {k: fix(getattr(self, k)) for k in ("model_config_file", "vocabulary", "audit_log")}
        update["vocabulary"] = update["vocabulary"] or str(SHIPPED_VOCABULARY)
        if looks_like_file(self.weights):
            update["weights"] = fix(self.weights)
        return self.model_copy(update=update)


def looks_like_file(weights: str) -> bool:
    """A weights value names a file (not a pretrained tag) when it has a path separator or a file suffix."""
    return bool(weights) and ("/" in weights or "\\" in weights or
                              Path(weights).suffix in (".bin", ".pt", ".pth", ".safetensors", ".ckpt"))


class SceneVision(_Strict):
    """A scene's ``[vision]`` table: the describe loop, hidden prompts and negative concepts (never shown)."""

    describe_loop: bool = False
    period: Annotated[float, Field(gt=0, le=86400)] = 20.0  # path seconds between two descriptions used as prompts
    drift_guard: Annotated[int, Field(ge=0, le=100)] = 3  # no term repeated within the last N descriptions
    hidden_prompts: list[Concept] = []
    negative: list[Annotated[str, Field(min_length=1, max_length=500)]] = []


class SteerSettings(_Strict):
    """A scene's ``[steer]`` table (``/steer s [f]`` overrides the text and strength live)."""

    text: str = Field("", max_length=500, description="what the walk bends towards; '' = no steering")
    strength: float = Field(0.7, ge=0.0, le=1.0)
    candidates: int = Field(4, ge=1, le=32, description="other seeds evaluated each round")
    period: float = Field(4.0, gt=0.0, le=3600.0, description="path seconds between two rounds")
    horizon: tuple[float, ...] = Field((1.0, 2.5, 4.0), min_length=1, max_length=8,
                                       description="path seconds ahead at which each candidate is rendered")
    scale: int = Field(2, ge=1, le=8, description="candidate renders at 1/scale of the scene's resolution")
