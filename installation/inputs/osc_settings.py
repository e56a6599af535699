"""The OSC part's settings (``[inputs.osc]``): where to listen, who may talk, how fast, and where feedback goes.

Read by the OSC transport (:mod:`installation.inputs.osc`) and by the control surface it feeds
(:mod:`installation.inputs.surface`), which OSCQuery and MIDI share.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

from installation.inputs.prompt_guard import PromptGuardSettings


class OscSettings(BaseModel):
    """``[inputs.osc]``: where to listen, who may talk, how fast, and where feedback goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="bind address; 0.0.0.0 to listen on all interfaces")
    port: int = Field(default=9000, ge=0, le=65535, description="0 picks a free port (tests)")
    allow: tuple[str, ...] = Field(
        default=(), description="sender IPs or CIDR networks allowed besides loopback; empty = loopback only; "
                                "['0.0.0.0/0', '::/0'] = all"
    )
    allow_loopback: bool = Field(
        default=True, description="senders on this machine (127.0.0.0/8, ::1) are allowed whatever `allow` says; "
                                  "false: only the `allow` list (loopback only when it is empty)")
    rate_limit: float = Field(
        default=500.0, gt=0.0,
        description="messages per second per sender host (all of 127.0.0.0/8 and ::1 are one host), shared evenly "
                    "by the host's ports active in the last 10 s",
    )
    burst: int = Field(default=500, ge=1, description="token bucket size per host (messages), shared like the rate")
    max_senders: int = Field(default=256, ge=1, description="sender hosts kept by the limiter (least recent dropped)")
    ports_per_host: int = Field(
        default=16, ge=1, le=1024, description="ports of one host with their own share; further ports share one"
    )
    rcvbuf: int = Field(
        default=4 << 20, ge=4096, le=1 << 30,
        description="kernel receive buffer asked for (bytes); Linux grants at most net.core.rmem_max",
    )
    structural_interval: float = Field(
        default=0.25, ge=0.0, le=10.0,
        description="seconds between two scene changes, two seed jumps or two prompts of one slot from OSC; the "
                    "newest in between is applied when the interval ends; 0 = no limit",
    )
    exclude_prefixes: tuple[str, ...] = Field(
        default=("audio.", "camera.", "midi.", "link."),
        description="parameters neither settable over OSC nor fed back (inputs' own features)"
    )
    prompt_slots: int = Field(default=4, ge=0, le=64, description="/prompt/0 .. /prompt/<n-1>")
    prompt_weight: tuple[float, float] = Field(default=(0.0, 2.0), description="allowed weight range")
    prompt: PromptGuardSettings = PromptGuardSettings()
    allow_quit: bool = Field(default=False, description="map /quit (posts a 'quit' event)")
    patterns: bool = Field(
        default=False, description="accept OSC address patterns (* ? [] {}); off: '/*' could fire /panic"
    )
    feedback_host: str | None = Field(default=None, description="feedback target host; None = no feedback")
    feedback_port: int = Field(default=9001, ge=1, le=65535)
    feedback_rate: float = Field(default=30.0, gt=0.0, le=1000.0, description="flushes per second, at most")
    feedback_max_messages: int = Field(default=64, ge=1, description="messages per flush; the rest wait")
    feedback_norm: bool = Field(default=False, description="send /param/<name>/norm 0..1 instead of native")
    echo_guard: float = Field(default=0.5, ge=0.0, description="seconds a sender's own value is not echoed")

    @field_validator("allow")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"allow: {entry!r} is not an IP address or network ({exc})") from None
        return v
