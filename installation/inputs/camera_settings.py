"""The camera input's settings (``[inputs.camera]``) and the features it writes: what both the input
(:mod:`installation.inputs.camera`) and its worker process (:mod:`installation.inputs.camera_worker`) read.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from installation.bus import ParamSpec

FEATURES = (
    "camera.motion", "camera.flow_x", "camera.flow_y", "camera.flow_mag", "camera.presence", "camera.brightness",
)
LAVFI_PREFIX = "lavfi:"


class CameraSettings(BaseModel):
    """``[inputs.camera]``: the source, analysis size, thresholds, smoothing and reopen policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="off unless asked for: no camera is opened by default")
    source: int | str = Field(
        default=0, description="device index, video file (looped), URL, or 'lavfi:<ffmpeg filtergraph>'"
    )
    width: int | None = Field(default=None, ge=16, description="requested capture width (devices)")
    height: int | None = Field(default=None, ge=16, description="requested capture height (devices)")
    fps: float | None = Field(default=None, gt=0.0, le=240.0, description="pace files/lavfi; None = file's rate")
    loop: bool = Field(default=True, description="files: start again at the end")
    mirror: bool = Field(default=False, description="flip left-right (facing installations); flips flow_x too")
    analysis_width: int = Field(default=160, ge=32, le=1280, description="grey analysis image width, pixels")
    motion_threshold: float = Field(default=15.0, ge=0.0, le=255.0, description="grey levels a pixel must change")
    presence_threshold: float = Field(default=25.0, ge=0.0, le=255.0, description="grey levels from background")
    background_time: float = Field(default=10.0, gt=0.0, description="seconds for the background to adapt")
    flow_width: int = Field(default=80, ge=16, le=1280, description="optical flow runs on an image this wide (at "
                                                                   "most analysis_width): the analysis's main cost")
    flow_min: float = Field(default=0.2, ge=0.0, description="px/frame (analysis size) for a pixel to count as moving")
    attack: float = Field(default=0.05, ge=0.0)
    release: float = Field(default=0.3, ge=0.0)
    gain: float = Field(default=1.0, ge=0.0, description="applied to motion, flow and presence")
    stale_after: float = Field(default=2.0, gt=0.0, description="latest_frame() is None after this long without one")
    reopen_min: float = Field(default=0.5, gt=0.0)
    reopen_max: float = Field(default=10.0, gt=0.0)
    hang_s: float = Field(default=60.0, gt=0.0, description="a camera process silent this long (stuck opening or "
                                                          "reading; at start at least 60 s) is killed, and the "
                                                          "input restarted")
    frame_width: int = Field(default=1024, ge=0, description="img2img source frames are shrunk to this width at "
                                                           "most (0 = as captured)")
    threads: int = Field(default=1, ge=1, le=64, description="OpenCV threads in the camera process")
    nice: int = Field(default=5, ge=0, le=19, description="the camera process's niceness: analysis yields the "
                                                       "cores to the presenter and the decoder")


def feature_specs(settings: CameraSettings | None = None) -> list[ParamSpec]:
    """The bus parameters this input writes (smoothed by the input, so unsmoothed on the bus)."""
    return [
        ParamSpec("camera.motion", min=0.0, max=1.0, doc="fraction of the frame that changed since the last one"),
        ParamSpec("camera.flow_x", min=-1.0, max=1.0, doc="mean optical flow of moving pixels, frame widths/s, +right"),
        ParamSpec("camera.flow_y", min=-1.0, max=1.0, doc="mean optical flow of moving pixels, frame widths/s, +down"),
        ParamSpec("camera.flow_mag", min=0.0, max=1.0, doc="mean flow speed over the whole frame, frame widths/s"),
        ParamSpec("camera.presence", min=0.0, max=1.0, doc="fraction of the frame unlike the learned background"),
        ParamSpec("camera.brightness", min=0.0, max=1.0, doc="mean grey level, 0 black .. 1 white"),
    ]
