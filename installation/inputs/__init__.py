"""Steering inputs: OSC control surface, microphone features and camera features, all writing to the ParamBus.

Each input is a part (:mod:`installation.parts`): ``Input(settings, bus, ...)`` with ``start()``, ``stop()``
(idempotent), ``alive`` and ``stats()``, registered under its ``[inputs.<name>]`` table; settings are frozen pydantic
models with safe defaults (OSC on loopback only; microphone and camera off until enabled). The ``[inputs]`` model is
built from the registry by the config (``config_model().model_fields["inputs"]``: one sub-table per registered input).
"""

from __future__ import annotations

from installation.inputs.audio import AudioInput, AudioSettings
from installation.inputs.camera import CameraInput, CameraSettings
from installation.inputs.osc import OscServer, OscSettings

__all__ = [
    "AudioInput", "AudioSettings", "CameraInput", "CameraSettings", "OscServer", "OscSettings",
]

