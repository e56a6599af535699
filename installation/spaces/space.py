"""Space files: a folder of images encoded by a diffusion model's VAE (or TAESD) into latents.

``installation space build FOLDER --model DIR [--taesd DIR] --out SPACE.npz`` reads every image (see
:mod:`.folder`), centre-crops it to ``--size`` pixels, encodes it into the (scaled) latent a diffusion scene's
img2img starts from, and writes one compressed ``.npz``:

- ``latents``     N x C x h x w float16 (already multiplied by the VAE's scaling factor, as the decoder keeps them)
- ``embeddings``  N x D float32, unit length: CLIP image embeddings when ``--clip`` names an open_clip model, else
                  the latents average-pooled to 4 x 4 per channel and standardised (similar layout and colour
                  land close; good enough to order a tour, not a semantic similarity)
- ``thumbnails``  N x 64 x 64 x 3 uint8, ``names`` N relative file names, ``skipped`` K x 2 (name, why)
- ``meta``        JSON: model, taesd, size, latent shape, embedding kind, image count

Encoding is resumable: finished batches are kept in ``SPACE.parts/`` (one small npz each, plus the settings they
were made with) until the space file is written, so a run that is interrupted continues where it stopped.
The ``images`` trajectory (:class:`installation.latent.trajectories.Images`) walks a space file.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import files

log = logging.getLogger(__name__)

THUMB = 64


@dataclass(frozen=True)
class Space:
    """A loaded space file."""

    latents: np.ndarray
    embeddings: np.ndarray
    thumbnails: np.ndarray
    names: list[str]
    skipped: list[tuple[str, str]]
    meta: dict[str, Any]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])


def _read(path: str | Path, take: Callable[[Any], Any]) -> Any:
    """``take(npz)`` on an open space file; FileNotFoundError / ValueError with one clear line otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"space file {p} not found; make one with `installation space build FOLDER "
                                f"--model DIR --out {p.name}`")
    try:
        with np.load(p, allow_pickle=False) as z:
            return take(z)
    except files.FileError as e:
        raise ValueError(f"{p} is not a space file (meta: {e.why})") from None
    except Exception as e:  # noqa: BLE001 - an untrusted zip of arrays fails in many ways (zlib, zipfile, struct, ...)
        raise ValueError(f"{p} is not a space file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def _meta(z: Any, path: str | Path) -> dict[str, Any]:
    """A space file's ``meta`` entry: a JSON object whose ``latent_shape`` is a list of positive integers."""
    meta = files.parse_json(str(z["meta"]), path, max_depth=8)
    shape = meta.get("latent_shape") if isinstance(meta, dict) else None
    if not (isinstance(shape, list) and 1 <= len(shape) <= 8 and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 < n < 1 << 20 for n in shape)):
        raise ValueError("its meta entry has no usable latent_shape")
    return meta


def load_space(path: str | Path) -> Space:
    """Read a space file; a clear error for a missing or malformed one."""
    space = _read(path, lambda z: Space(
        latents=z["latents"], embeddings=z["embeddings"], thumbnails=z["thumbnails"],
        names=[str(n) for n in z["names"]], skipped=[tuple(r) for r in z["skipped"]], meta=_meta(z, path)))
    if space.latents.ndim != 4 or len(space.latents) == 0 or len(space.embeddings) != len(space.latents):
        raise ValueError(f"{path}: a space file needs N >= 1 latents (N x C x h x w) and N embeddings")
    return space


@functools.lru_cache(maxsize=4)
def _shared(path: str, mtime_ns: int) -> Space:
    space = load_space(path)
    for arr in (space.latents, space.embeddings, space.thumbnails):
        arr.flags.writeable = False
    return space


def shared_space(path: str | Path) -> Space:
    """:func:`load_space`, read once per file version and shared read-only (trajectories are rebuilt on every seed
    jump and scene change; a big space file is not read again each time)."""
    p = Path(path).expanduser()
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        return load_space(p)  # raises the clear error
    return _shared(str(p.resolve()), mtime)


def space_meta(path: str | Path) -> dict[str, Any]:
    """Only the ``meta`` entry of a space file (cheap: the latents are not read)."""
    return _read(path, lambda z: _meta(z, path))


def similarity_order(embeddings: np.ndarray, start: int = 0) -> list[int]:
    """A nearest-neighbour chain on cosine similarity: from ``start``, always the most similar unvisited image.

    O(N^2) time and O(N) memory (one row of similarities at a time)."""
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    n = len(e)
    visited = np.zeros(n, bool)
    order = [start % n]
    visited[order[0]] = True
    for _ in range(n - 1):
        sims = e @ e[order[-1]]
        sims[visited] = -np.inf
        nxt = int(np.argmax(sims))
        order.append(nxt)
        visited[nxt] = True
    return order


# -- building -----------------------------------------------------------------------------------------------------


class _Encoder:
    """The VAE (or TAESD) of a diffusers folder, in float32 on a device; image batches -> scaled latents."""

    def __init__(self, model: str, taesd: str, device: str) -> None:
        import diffusers
        import torch

        from ..decoders.diffusion import check_weights, vae_factor

        how = "give a folder with .safetensors weights"

        self.torch = torch
        self.device = torch.device(device)
        if taesd:
            folder = Path(taesd).expanduser()
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"TAESD folder {folder} not found or has no config.json")
            self.vae = diffusers.AutoencoderTiny.from_pretrained(folder, variant=check_weights(folder, how),
                                                                 torch_dtype=torch.float32, low_cpu_mem_usage=False,
                                                                 use_safetensors=True)
            self.tiny = True
        else:
            folder = Path(model).expanduser() / "vae"
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"diffusers folder {model} has no vae/config.json (a diffusers model folder "
                                        f"such as stabilityai/sd-turbo, or give --taesd)")
            self.vae = diffusers.AutoencoderKL.from_pretrained(folder, variant=check_weights(folder, how),
                                                               torch_dtype=torch.float32, low_cpu_mem_usage=False,
                                                               use_safetensors=True)
            self.tiny = False
        self.vae.to(self.device).eval().requires_grad_(False)
        self.scale = float(self.vae.config.get("scaling_factor", 1.0) or 1.0)
        self.factor = vae_factor(self.vae.config)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            if self.tiny:
                lat = self.vae.encode(x, return_dict=False)[0]
            else:
                lat = self.vae.encode(x).latent_dist.mode()
            return (lat.float() * self.scale).cpu().numpy()


class _Clip:
    """open_clip image embeddings (unit length) for a named model and a local weights file (or none: random)."""

    def __init__(self, name: str, pretrained: str, config: str, device: str) -> None:
        import open_clip
        import torch

        from ..decoders.weights import check_pickle

        if config:
            open_clip.add_model_config(Path(config).expanduser())
        if pretrained and Path(pretrained).expanduser().is_file():
            check_pickle(pretrained, "--clip-pretrained")  # a pickle with more than tensors is refused, never run
        self.torch = torch
        self.device = torch.device(device)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None,
                                                                               device=self.device, weights_only=True)
        self.model.eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        torch = self.torch
        with torch.inference_mode():
            x = torch.stack([self.preprocess(Image.fromarray(im)) for im in images]).to(self.device)
            e = self.model.encode_image(x).float()
            return torch.nn.functional.normalize(e, dim=-1).cpu().numpy()


def _latent_embedding(latents: np.ndarray) -> np.ndarray:
    """Latents average-pooled to 4 x 4 per channel, flattened (standardised and normalised once all are in)."""
    n, c, h, w = latents.shape
    gh, gw = max(1, h // 4), max(1, w // 4)
    cropped = latents[:, :, :gh * 4, :gw * 4] if h >= 4 and w >= 4 else latents
    if h >= 4 and w >= 4:
        return cropped.reshape(n, c, 4, gh, 4, gw).mean(axis=(3, 5)).reshape(n, -1).astype(np.float32)
    return latents.reshape(n, -1).astype(np.float32)


def _thumb(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def build_space(folder: str | Path, out: str | Path, model: str = "", taesd: str = "", size: int = 512,
                batch: int = 4, clip: str = "", clip_pretrained: str = "", clip_config: str = "",
                device: str = "auto", progress: bool = True,
                on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Encode a folder into a space file (resuming from ``OUT.parts/``); returns a summary with the throughput.

    ``on_batch(done)`` is called after each batch is stored (tests use it to interrupt a run).
    """
    import torch
    from tqdm import tqdm

    from .folder import list_images, load_square

    root = Path(folder).expanduser()
    out = Path(out).expanduser()
    if not model and not taesd:
        raise ValueError("give --model (a diffusers folder) or --taesd (a TAESD folder)")
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    files = list_images(root)
    encoder = _Encoder(model, taesd, dev)
    if size % max(8, encoder.factor):
        raise ValueError(f"--size {size} must be a multiple of {max(8, encoder.factor)} (the scene's width/height)")
    clipper = _Clip(clip, clip_pretrained, clip_config, dev) if clip else None
    settings = {"model": str(Path(model).expanduser().resolve()) if model else "",
                "taesd": str(Path(taesd).expanduser().resolve()) if taesd else "", "size": size,
                "clip": clip, "clip_pretrained": clip_pretrained, "folder": str(root.resolve())}
    parts = out.with_name(out.name + ".parts")
    done = _open_parts(parts, settings)
    done_names = {n for part in done for n in part["names"]} | {n for part in done for n, _ in part["skipped"]}
    todo = [p for p in files if str(p.relative_to(root)) not in done_names]
    if done_names:
        log.info("space: resuming: %d images already encoded in %s, %d to go", len(done_names), parts, len(todo))
    bar = tqdm(total=len(files), initial=len(files) - len(todo), unit="img", disable=not progress,
               desc=f"encode {size}px", dynamic_ncols=True)
    t0, encoded = time.perf_counter(), 0
    for start in range(0, len(todo), batch):
        chunk, names, skipped = [], [], []
        for p in todo[start:start + batch]:
            name = str(p.relative_to(root))
            try:
                chunk.append(load_square(p, size))
                names.append(name)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped and listed
                skipped.append((name, f"{type(exc).__name__}: {exc}"))
                log.warning("space: skipped %s (%s)", name, exc)
        part = {"names": names, "skipped": skipped}
        if chunk:
            images = np.stack(chunk)
            lat = encoder(images)
            part.update(latents=lat.astype(np.float16), thumbnails=np.stack([_thumb(im) for im in images]),
                        clip=clipper(images) if clipper else np.zeros((len(chunk), 0), np.float32),
                        pooled=_latent_embedding(lat))
            encoded += len(chunk)
        _write_part(parts, len(done), part)
        done.append(part)
        bar.update(len(names) + len(skipped))
        if on_batch is not None:
            on_batch(sum(len(d["names"]) + len(d["skipped"]) for d in done))
    bar.close()
    seconds = time.perf_counter() - t0
    meta = _write_space(out, done, settings, encoder, clip)
    shutil.rmtree(parts, ignore_errors=True)
    meta.update(seconds=round(seconds, 3), encoded_now=encoded,
                images_per_s=round(encoded / seconds, 3) if seconds > 0 and encoded else None)
    return meta


def _open_parts(parts: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished batches of an earlier run with the same settings (others are discarded, with a note)."""
    meta = parts / "settings.json"
    if parts.is_dir() and meta.is_file():
        try:
            same = json.loads(meta.read_text()) == settings
        except ValueError:
            same = False
        if same:
            loaded = []
            for f in sorted(parts.glob("part_*.npz")):
                try:
                    with np.load(f, allow_pickle=False) as z:
                        part = {k: z[k] for k in z.files}
                    part["names"] = [str(n) for n in part["names"]]
                    part["skipped"] = [tuple(r) for r in part["skipped"]]
                    loaded.append(part)
                except (OSError, ValueError, KeyError):
                    break  # a half-written last part: encode it again
            return loaded
        log.info("space: %s was made with other settings; starting over", parts)
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(settings))
    return []


def _write_part(parts: Path, index: int, part: dict[str, Any]) -> None:
    arrays = {k: v for k, v in part.items() if k not in ("names", "skipped")}
    tmp = parts / f"part_{index:06d}.tmp.npz"
    np.savez(tmp, names=np.array(part["names"], dtype=str),
             skipped=np.array(part["skipped"], dtype=str).reshape(-1, 2), **arrays)
    tmp.replace(parts / f"part_{index:06d}.npz")


def _write_space(out: Path, done: list[dict[str, Any]], settings: dict[str, Any], encoder: _Encoder,
                 clip: str) -> dict[str, Any]:
    full = [d for d in done if len(d["names"])]
    names = [n for d in done for n in d["names"]]
    skipped = [s for d in done for s in d["skipped"]]
    if not full:
        raise ValueError(f"none of the images in {settings['folder']} could be read ({len(skipped)} skipped)")
    latents = np.concatenate([d["latents"] for d in full])
    if clip:
        emb = np.concatenate([d["clip"] for d in full]).astype(np.float32)
    else:
        pooled = np.concatenate([d["pooled"] for d in full])
        emb = (pooled - pooled.mean(0)) / (pooled.std(0) + 1e-6)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    meta = {**settings, "latent_shape": list(latents.shape[1:]), "images": len(names), "skipped": len(skipped),
            "embedding": f"clip:{clip}" if clip else "pooled-latents", "scaling_factor": encoder.scale,
            "encoder": "taesd" if encoder.tiny else "vae"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, latents=latents, embeddings=emb.astype(np.float32),
                        thumbnails=np.concatenate([d["thumbnails"] for d in full]), names=np.array(names, dtype=str),
                        skipped=np.array(skipped, dtype=str).reshape(-1, 2), meta=np.array(json.dumps(meta)))
    tmp.replace(out)
    return meta
