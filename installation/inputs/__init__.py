"""Steering inputs: OSC control surface, microphone features and camera features, all writing to the ParamBus.

Each input is ``Input(settings, bus, ...)`` with ``start()``, ``stop()`` (idempotent) and ``stats()``; settings are
frozen pydantic models with safe defaults (OSC on loopback only; microphone and camera off until enabled).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from installation.inputs.audio import AudioInput, AudioSettings
from installation.inputs.camera import CameraInput, CameraSettings
from installation.inputs.osc import OscServer, OscSettings

__all__ = [
    "AudioInput", "AudioSettings", "CameraInput", "CameraSettings", "InputsSettings", "OscServer", "OscSettings",
]


class InputsSettings(BaseModel):
    """The ``[inputs]`` table: one sub-table per input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    osc: OscSettings = OscSettings()
    audio: AudioSettings = AudioSettings()
    camera: CameraSettings = CameraSettings()
