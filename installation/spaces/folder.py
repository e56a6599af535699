"""Reading a folder of images the way a user leaves it: jpg/png/webp of any size, phone photos turned by their EXIF
orientation, unreadable files skipped and listed (never a crash). Also a procedural set drawn with OpenCV, for tests
and for trying the trainer without a folder of one's own."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted by relative path); a clear error when there is none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def load_square(path: str | Path, size: int) -> np.ndarray:
    """One image as size x size x 3 uint8 RGB: EXIF-rotated, alpha dropped, centre-cropped to a square, resized.

    Raises OSError / ValueError (PIL's) for a file that is not a readable image.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            flat = Image.new("RGB", im.size, (0, 0, 0))
            flat.paste(im, mask=im.getchannel("A"))
            im = flat
        im = ImageOps.fit(im.convert("RGB"), (size, size), method=Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


def read_folder(folder: str | Path, size: int) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """All readable images of a folder at size x size: (N x size x size x 3 uint8, names, [(name, why) skipped])."""
    root = Path(folder).expanduser()
    images, names, skipped = [], [], []
    for p in list_images(root):
        name = str(p.relative_to(root))
        try:
            images.append(load_square(p, size))
            names.append(name)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file; skip and list it
            skipped.append((name, f"{type(exc).__name__}: {exc}"))
    if not images:
        raise ValueError(f"none of the images in {root} could be read ({len(skipped)} skipped)")
    return np.stack(images), names, skipped


def draw_shapes(out: str | Path, n: int = 300, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` PNGs of a simple procedural set: a two-colour gradient and one to three filled shapes (circle,
    square, triangle) from a small palette. Structure a generator can learn in minutes on a CPU."""
    import cv2

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = np.array([(230, 57, 70), (241, 196, 15), (46, 204, 113), (52, 152, 219), (155, 89, 182),
                        (245, 245, 245)], np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for i in range(n):
        a, b = rng.uniform(0, 60, 3), rng.uniform(20, 110, 3)
        t = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        img = (a * (1 - t[..., None]) + b * t[..., None]) * np.ones((size, size, 1), np.float32)
        img = np.ascontiguousarray(img.astype(np.uint8))
        for _ in range(int(rng.integers(1, 4))):
            colour = tuple(int(c) for c in palette[rng.integers(len(palette))])
            cx, cy = (int(v) for v in rng.integers(size // 6, size - size // 6, 2))
            r = int(rng.integers(size // 10, size // 4))
            kind = rng.integers(3)
            if kind == 0:
                cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)
            elif kind == 1:
                cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1, cv2.LINE_AA)
            else:
                pts = np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)
                cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        cv2.imwrite(str(out / f"shape_{i:04d}.png"), img[:, :, ::-1])
    return out
