"""``installation doctor``: what this machine offers."""

from __future__ import annotations

import argparse

from .registry import command


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..doctor import report

    for name, status in report(args.config):
        print(f"{name:<10} {status}")
    return 0


command("doctor", help="what this machine offers: GL, torch device, displays, audio, cameras",
        description="Check GL, torch, displays, ffmpeg, audio and camera devices.", run=cmd_doctor)
