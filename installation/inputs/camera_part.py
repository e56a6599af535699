"""The camera as a part: :class:`~installation.inputs.camera.CameraInput` plus its plan hook, which hands the newest
camera frame to a diffusion scene as its img2img source.

(It lives beside ``camera.py`` rather than in it only while that module is being reworked; it is the same input.)
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from installation.inputs.camera import CameraInput, CameraSettings, feature_specs
from installation.parts import Moment, PartContext, register

if TYPE_CHECKING:
    from installation.show import PathPlan


class CameraPart(CameraInput):
    """The camera input, and the img2img source of diffusion scenes (its ``plan`` hook)."""

    def __init__(self, settings: CameraSettings, bus: Any) -> None:
        super().__init__(settings, bus)
        self.last_source: Any = None  # the newest frame handed to the decoder (None: none yet)

    def plan(self, plan: "PathPlan", moment: Moment) -> "PathPlan":
        """A diffusion scene's plan gets the newest camera frame as its source (img2img); other scenes' plans pass.

        To a decoder process the frame travels only when it is a new one, not at every display tick."""
        if moment.scene.decoder.type != "diffusion":
            return plan
        frame = self.latest_frame()
        if frame is None:
            return plan
        fresh = frame is not self.last_source or not moment.remote_decoder
        self.last_source = frame
        return replace(plan, wants_source=True, extras={**plan.extras, "source": frame} if fresh else plan.extras)


@register("camera", table="inputs.camera", settings=CameraSettings, params=feature_specs, order=12)
def build(settings: CameraSettings, ctx: PartContext) -> CameraPart | None:
    """The camera part: off unless ``[inputs.camera] enabled = true`` (a missing source is retried, not fatal)."""
    return CameraPart(settings, ctx.bus) if settings.enabled else None
