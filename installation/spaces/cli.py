"""The ``train`` and ``space`` subcommands' flags; the work is imported only when a command runs (torch is slow to
import, and ``installation --help`` should not wait for it)."""

from __future__ import annotations

import argparse

from ..cli.registry import command

SIZES = (64, 128, 256)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """``installation train FOLDER --out MODEL.safetensors``."""
    _log_level(p)
    p.add_argument("folder", help="folder of images (jpg/png/webp, any size; centre-cropped to squares)")
    p.add_argument("--out", required=True, help="generator file to write (.safetensors: weights and their declared "
                                                 "architecture)")
    p.add_argument("--size", type=int, default=64, choices=SIZES, help="image side in pixels (default 64)")
    p.add_argument("--minutes", type=float, default=30.0, help="training time in all, across resumes (default 30)")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps in all (default: minutes only)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--augment", choices=["always", "ada", "off"], default="always",
                   help="DiffAugment on reals and fakes: always (default), at an adaptive probability (ADA's "
                        "heuristic), or off")
    p.add_argument("--preview-minutes", type=float, default=5.0, help="a preview grid + KID every N minutes")
    p.add_argument("--checkpoint-minutes", type=float, default=2.0)
    p.add_argument("--kid-samples", type=int, default=256, help="generated images per KID figure (0 = no KID)")
    p.add_argument("--work", default="", help="run folder for checkpoint, previews, metrics (default OUT.run/)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--bench", type=int, default=0, metavar="STEPS",
                   help="only measure: time STEPS training steps (after 2 warm-up steps), print steps/s as JSON, "
                        "write nothing")


def _log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)


def _setup_logging(level: str) -> None:
    """stderr at ``level``: these commands read no show config, so no log file and no secrets to scrub."""
    from ..ops import LogSettings, setup_logging

    setup_logging(LogSettings(level=level), None)


def _run_train(args: argparse.Namespace) -> int:
    from .train import main

    _setup_logging(args.log_level or "info")
    return main(args)


def _space_arguments(p: argparse.ArgumentParser) -> None:
    """``installation space build FOLDER --model DIR --out SPACE.npz``, ``installation space search``."""
    ssub = p.add_subparsers(dest="space_command", required=True)
    b = ssub.add_parser("build", help="encode a folder of images into a space file (resumable)",
                        description="Encode every image (jpg/png/webp, any size, EXIF orientation respected; "
                                    "unreadable files skipped and listed) with the model's VAE or TAESD into a "
                                    "space file: latents, embeddings, thumbnails, names.")
    _log_level(b)
    b.add_argument("folder", help="folder of images")
    b.add_argument("--model", default="", help="diffusers model folder (its vae/ encodes)")
    b.add_argument("--taesd", default="", help="TAESD folder: encode with it instead of the full VAE")
    b.add_argument("--out", required=True, help="space file to write (.npz)")
    b.add_argument("--size", type=int, default=512,
                   help="image side in pixels, the scene's decoder width and height (default 512)")
    b.add_argument("--batch", type=int, default=4)
    b.add_argument("--clip", default="", help="open_clip model name for the embeddings (default: pooled latents)")
    b.add_argument("--clip-pretrained", default="", help="local weights file for --clip")
    b.add_argument("--clip-config", default="", help="a model config JSON (file or folder) for --clip")
    b.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    b.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    b.set_defaults(func=_run_space_build)


    q = ssub.add_parser("search", help="the images of a space file (built with --clip) most like a text or picture",
                        description="Embed a text (or --image) with the CLIP model the space was built with and "
                                    "list its images by cosine similarity, with a contact sheet.")
    _log_level(q)
    q.add_argument("space", help="space file (.npz) built with --clip")
    q.add_argument("text", nargs="?", help="what to look for (or --image)")
    q.add_argument("--image", help="the images most like this picture instead")
    q.add_argument("--top", type=int, default=20, help="how many results (default 20)")
    q.add_argument("--out", help="a contact sheet (.png, or .html)")
    q.add_argument("--clip-pretrained", default="", help="weights file (default: the one the space was built with)")
    q.add_argument("--clip-config", default="", help="a model config JSON, for a model open_clip does not ship")
    q.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_run_space_search)


def _run_space_search(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..archive.commands import _fail, _query, _show_hits
    from ..archive.search import QueryEncoder, search_space
    from ..vision.settings import VisionSettings
    from .space import space_meta

    _setup_logging(args.log_level or "warning")
    if (args.text is None) == (args.image is None):
        return _fail("space search: give a text or --image FILE (one of them)")
    if args.top < 1:
        return _fail("--top must be at least 1")
    try:
        meta = space_meta(args.space)
        clip = str(meta.get("embedding", ""))
        if not clip.startswith("clip:"):
            raise ValueError(f"{args.space} was built without --clip (its embeddings are {clip or 'unknown'}): "
                             "rebuild it with `installation space build ... --clip MODEL` to search it by meaning")
        config = str(Path(args.clip_config).expanduser().resolve()) if args.clip_config else ""
        if config and Path(config).is_dir():
            config = next((str(f) for f in sorted(Path(config).glob(f"{clip[5:]}.json"))), "")
        settings = VisionSettings(enabled=True, model=clip[5:], model_config_file=config, device=args.device,
                                  weights=args.clip_pretrained or str(meta.get("clip_pretrained", "")))
        query = _query(QueryEncoder(settings), args.text, Path(args.image) if args.image else None)
        hits = search_space(args.space, query, k=args.top)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"installation: space search: {e}", file=sys.stderr)
        return 2
    args.out = Path(args.out) if args.out else None
    what = f"{args.text!r}" if args.text is not None else f"like {Path(args.image).name}"
    return _show_hits(hits, f"{Path(args.space).name}: {what}", args, {"space": args.space, "images": len(hits)})


def _run_space_build(args: argparse.Namespace) -> int:
    import json
    import sys

    from .space import build_space

    _setup_logging(args.log_level or "info")
    try:
        meta = build_space(args.folder, args.out, model=args.model, taesd=args.taesd, size=args.size,
                           batch=args.batch, clip=args.clip, clip_pretrained=args.clip_pretrained,
                           clip_config=args.clip_config, device=args.device, progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"installation: space build: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {meta['images']} images, latents {tuple(meta['latent_shape'])}, "
          f"{meta['skipped']} skipped; {meta['images_per_s'] or '-'} images/s")
    if args.json:
        print(json.dumps(meta))
    return 0


command("train", help="train a small GAN on a folder of images, for [decoder] type = \"gan\"",
        description="Train a compact style-based GAN on a folder of images (a few hundred is enough for simple "
                    "sets), with previews, KID, resumable checkpoints, and export the generator for the GAN decoder.",
        arguments=_train_arguments, run=_run_train, common=False)
command("space", help="make a space file from a folder of images (for the images trajectory)",
        description="Space files: a folder of images encoded into a diffusion model's latents.",
        arguments=_space_arguments, run=None, common=False)  # its subcommands (build, search) each set one
