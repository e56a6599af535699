"""The ``train`` and ``space`` subcommands' flags; the work is imported only when a command runs (torch is slow to
import, and ``installation --help`` should not wait for it)."""

from __future__ import annotations

import argparse

SIZES = (64, 128, 256)


def add_train(sub: argparse._SubParsersAction) -> None:
    """``installation train FOLDER --out MODEL.pt2``."""
    p = sub.add_parser("train", help="train a small GAN on a folder of images, for [decoder] type = \"gan\"",
                       description="Train a compact style-based GAN on a folder of images (a few hundred is "
                                   "enough for simple sets), with previews, KID, resumable checkpoints, and export "
                                   "the generator for the GAN decoder.")
    _log_level(p)
    p.add_argument("folder", help="folder of images (jpg/png/webp, any size; centre-cropped to squares)")
    p.add_argument("--out", required=True, help="generator file to write: .pt2 (torch.export) or .pt (TorchScript)")
    p.add_argument("--size", type=int, default=64, choices=SIZES, help="image side in pixels (default 64)")
    p.add_argument("--minutes", type=float, default=30.0, help="training time in all, across resumes (default 30)")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps in all (default: minutes only)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--preview-minutes", type=float, default=5.0, help="a preview grid + KID every N minutes")
    p.add_argument("--checkpoint-minutes", type=float, default=2.0)
    p.add_argument("--kid-samples", type=int, default=256, help="generated images per KID figure (0 = no KID)")
    p.add_argument("--work", default="", help="run folder for checkpoint, previews, metrics (default OUT.run/)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    p.set_defaults(func=_run_train)


def _log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)


def _run_train(args: argparse.Namespace) -> int:
    from ..cli import _setup_logging
    from .train import main

    _setup_logging(args.log_level or "info")
    return main(args)
