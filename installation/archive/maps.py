"""Maps of the space a show has walked: archived points projected to 2-D, thumbnails at their places, the path
through them in time, scenes in colour. A PNG (``installation map --out``) and a zoomable page (``--html``).

Projection: UMAP (``umap-learn``) when it is installed and there are enough points, PCA otherwise (numpy's SVD);
on the CLIP embeddings when every point has one, on the latents otherwise.
"""

from __future__ import annotations

import base64
import html as htmllib
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .store import Point, Store, parse_source

log = logging.getLogger(__name__)

# Scene colours: bright enough on the dark ground, far apart in hue.
PALETTE = [(255, 179, 71), (94, 200, 255), (255, 105, 150), (130, 230, 140), (190, 150, 255), (255, 230, 110),
           (80, 230, 215), (255, 140, 90), (170, 200, 255), (230, 120, 230)]
BACKGROUND = ((14, 15, 24), (4, 4, 8))  # centre, edge


def features(points: list[Point]) -> tuple[np.ndarray, list[Point], str]:
    """The vectors to project (CLIP embeddings when every point has one, else the latents of the commonest
    shape), the points they belong to, and which they are."""
    if points and all(p.clip is not None for p in points):
        x = np.stack([p.clip / (np.linalg.norm(p.clip) or 1.0) for p in points])
        return x.astype(np.float64), points, "CLIP embeddings"
    shapes = Counter(p.latent.shape for p in points if p.latent is not None)
    if len(shapes) == 1:
        kept = [p for p in points if p.latent is not None]
        return np.stack([p.latent.ravel() for p in kept]).astype(np.float64), kept, "latents"
    # Scenes on different decoders walk different spaces: compare what they showed instead.
    pix = [(p, _pixels(p.thumb)) for p in points]
    kept = [p for p, v in pix if v is not None]
    if not kept:
        return np.zeros((0, 2)), [], "thumbnails"
    return np.stack([v for _, v in pix if v is not None]), kept, "thumbnails' colours (the latents differ in shape)"


def _pixels(data: bytes | None) -> np.ndarray | None:
    """A thumbnail as a small colour vector (16x9 pixels, 0..1), or None."""
    img = _thumb(data, 10**6)
    if img is None:
        return None
    return np.asarray(img.resize((16, 9)), dtype=np.float64).ravel() / 255.0


def project(x: np.ndarray, method: str = "auto") -> tuple[np.ndarray, str]:
    """2-D positions of the rows of ``x`` and the method used ("UMAP" or "PCA")."""
    n = len(x)
    if method in ("auto", "umap") and n >= 20:
        try:
            import umap  # optional: pip install umap-learn

            y = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=0).fit_transform(x)
            return np.asarray(y, dtype=np.float64), "UMAP"
        except ImportError:
            if method == "umap":
                raise ValueError("--method umap needs umap-learn: pip install umap-learn") from None
    if n == 0:
        return np.zeros((0, 2)), "PCA"
    mean, axes = pca_fit(x)
    return pca_project(x, mean, axes), "PCA"


def pca_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the rows of ``x`` and their two strongest axes of variation (fewer when ``x`` has fewer)."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2]


def pca_project(x: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Rows of ``x`` on the axes of :func:`pca_fit`, as 2-D points (a missing axis is 0)."""
    y = (x - mean) @ axes.T
    return y if y.shape[1] == 2 else np.concatenate([y, np.zeros((len(y), 2 - y.shape[1]))], axis=1)


def bounds(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 1st and 99th percentiles of the points on each axis: what :func:`layout` fits into its box."""
    return np.percentile(y, 1, axis=0), np.percentile(y, 99, axis=0)


def layout(y: np.ndarray, box: tuple[float, float, float, float],
           lo_hi: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Positions scaled into ``box`` (x0, y0, x1, y1), each axis on its own, the outer 1 % clipped (or scaled by
    given ``lo_hi`` bounds, so that later points land where the first ones put the scale)."""
    if len(y) == 0:
        return y
    lo, hi = bounds(y) if lo_hi is None else lo_hi
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    u = np.clip((y - lo) / span, 0.0, 1.0)
    x0, y0, x1, y1 = box
    return np.stack([x0 + u[:, 0] * (x1 - x0), y0 + (1 - u[:, 1]) * (y1 - y0)], axis=1)


def nearest(points: list[Point], x: float, y: float, method: str = "pca") -> Point | None:
    """The point drawn nearest (x, y) on the map of ``points`` (0..1 across and down the plotted area), with the
    projection ``installation map`` draws (PCA by default: stable, and quick enough to refit on every request)."""
    feats, kept, _ = features(points)
    if not kept:
        return None
    pos = layout(project(feats, method)[0], (0.0, 0.0, 1.0, 1.0))
    return kept[int(np.argmin(((pos - np.array([x, y])) ** 2).sum(axis=1)))]


def _background(w: int, h: int):
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / np.sqrt(2)
    r = np.clip(r, 0, 1)[..., None] ** 1.5
    c0, c1 = np.array(BACKGROUND[0], np.float32), np.array(BACKGROUND[1], np.float32)
    return Image.fromarray((c0 * (1 - r) + c1 * r).astype(np.uint8), "RGB").convert("RGBA")


def _thumb(data: bytes | None, edge: int):
    from PIL import Image

    if not data:
        return None
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception:  # noqa: BLE001 - a damaged thumbnail is left out
        return None
    img.thumbnail((edge, edge))
    return img


def _choose(pos: np.ndarray, order: list[int], size: tuple[int, int], edge: int) -> list[int]:
    """Points whose thumbnails are drawn: taken in ``order``, each kept when its square overlaps no kept one by more
    than a quarter."""
    kept: list[int] = []
    boxes: list[np.ndarray] = []
    for i in order:
        c = pos[i]
        if any(max(0.0, edge - abs(c[0] - b[0])) * max(0.0, edge - abs(c[1] - b[1])) > edge * edge / 4
               for b in boxes):
            continue
        kept.append(i)
        boxes.append(c)
    return kept


def _colours(points: list[Point]) -> dict[str, tuple[int, int, int]]:
    names: list[str] = []
    for p in points:
        if p.scene not in names:
            names.append(p.scene)
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def space_points(path: Path) -> list[Point]:
    """The images of a space file (``installation space build``) as map points, in the order its ``images``
    trajectory tours them (nearest neighbours on the embeddings), so the drawn path is the tour."""
    import cv2

    from ..spaces.space import load_space, similarity_order

    space = load_space(path)
    clip = str(space.meta.get("embedding", "")).startswith("clip:")
    out = []
    for k, i in enumerate(similarity_order(space.embeddings.astype(np.float64))):
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(space.thumbnails[i][..., ::-1]))
        out.append(Point(i, 0, float(k), "images", 0, 0.0, np.asarray(space.latents[i], np.float32),
                         jpeg.tobytes() if ok else None, space.embeddings[i] if clip else None, space.names[i]))
    return out


def draw_map(source: str | Path, out: Path, *, session: int | None = None, html: Path | None = None,
             size: tuple[int, int] = (1600, 1000), method: str = "auto", near: np.ndarray | None = None,
             near_text: str = "") -> dict[str, Any]:
    """Draw the map of an archive (one session, or all), or of a space file (``.npz``), to ``out`` (PNG) and
    optionally ``html``; returns figures. ``near`` (a unit CLIP embedding of ``near_text``): each point shaded by
    its similarity to it, the best matches ringed and numbered."""
    from PIL import Image, ImageDraw, ImageFont

    is_space = str(source).endswith(".npz")
    if is_space:
        path = Path(source)
        points = space_points(path)
    else:
        path, sid = parse_source(source)
        store = Store(path, readonly=True)
        try:
            sid = session if session is not None else sid
            if sid is not None:
                store.session(sid)  # KeyError when there is none
            points = store.points(sid)
        finally:
            store.close()
    x, points, what = features(points)
    if len(points) < 2:
        raise ValueError(f"{path}: {len(points)} archived point(s); a map needs at least 2 (run the show longer)")
    y, used = project(x, method)
    w, h = size
    margin = max(60, min(w, h) // 12)
    pos = layout(y, (margin, margin + 30, w - margin, h - margin - 40))
    colours = _colours(points)
    edge = max(40, min(w, h) // 11)
    img = _background(w, h)
    draw = ImageDraw.Draw(img, "RGBA")
    n = len(points)
    # the path, older faint, newer bright, in its scene's colour; a new session starts a new line
    for i in range(1, n):
        a, b = points[i - 1], points[i]
        if a.session != b.session:
            continue
        age = i / (n - 1)
        r, g, bl = colours[b.scene]
        draw.line([tuple(pos[i - 1]), tuple(pos[i])], fill=(r, g, bl, int(50 + 150 * age)), width=2 + int(2 * age))
    sims = _similarities(points, near) if near is not None else None
    for i, p in enumerate(points):
        r, g, bl = colours[p.scene]
        cx, cy = pos[i]
        if sims is not None:  # brighter and larger the closer to the text; grey without an embedding
            u = sims[i]
            rad = 3 + 10 * u if np.isfinite(u) else 2
            fill = (255, int(140 + 100 * u), int(60 + 120 * u), int(60 + 195 * u)) if np.isfinite(u) else \
                (110, 110, 120, 120)
            draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill)
        else:
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(r, g, bl, 200))
    # thumbnails: spread in time (every k-th first), or the best matches first, none hiding another
    stride = max(1, n // 24)
    order = list(range(0, n, stride)) + [i for i in range(n) if i % stride]
    best: list[int] = []
    if sims is not None:
        ranked = [i for i in np.argsort(-np.nan_to_num(sims, nan=-1.0), kind="stable") if np.isfinite(sims[i])]
        best = [int(i) for i in ranked[:5]]
        order = best + [i for i in order if i not in best]
    placed = _choose(pos, order, size, edge)
    for i in sorted(placed, key=lambda k: points[k].t):
        th = _thumb(points[i].thumb, edge)
        if th is None:
            continue
        tw, tht = th.size
        cx, cy = pos[i]
        x0, y0 = int(cx - tw / 2), int(cy - tht / 2)
        draw.rectangle([x0 + 4, y0 + 5, x0 + tw + 5, y0 + tht + 6], fill=(0, 0, 0, 110))  # shadow
        img.paste(th, (x0, y0))
        draw.rectangle([x0 - 2, y0 - 2, x0 + tw + 1, y0 + tht + 1], outline=colours[points[i].scene] + (255,),
                       width=2)
    # the path once more, thin, over the thumbnails, so it reads as one line
    for i in range(1, n):
        if points[i - 1].session == points[i].session:
            draw.line([tuple(pos[i - 1]), tuple(pos[i])], fill=(255, 255, 255, 60), width=1)
    font = ImageFont.load_default(size=max(14, h // 50))
    small = ImageFont.load_default(size=max(12, h // 70))
    for k, i in enumerate(best, 1):  # the best matches of --near, ringed and numbered
        cx, cy = pos[i]
        draw.ellipse([cx - 14, cy - 14, cx + 14, cy + 14], outline=(255, 255, 255, 255), width=3)
        draw.text((cx + 16, cy - 22), str(k), fill=(255, 255, 255, 255), font=font)
    for i, label in ((0, "start"), (n - 1, "end")):
        cx, cy = pos[i]
        draw.ellipse([cx - 9, cy - 9, cx + 9, cy + 9], outline=(255, 255, 255, 230), width=3)
        tw = draw.textlength(label, font=small)
        draw.rounded_rectangle([cx + 12, cy - 10, cx + 20 + tw, cy + 10], 4, fill=(0, 0, 0, 170))
        draw.text((cx + 16, cy - 8), label, fill=(255, 255, 255, 255), font=small)
    span = points[-1].t - points[0].t if points[0].session == points[-1].session else sum(
        max(p.t for p in points if p.session == s) - min(p.t for p in points if p.session == s)
        for s in {p.session for p in points})
    title = f"{path.stem}: {n} images, the path is their tour" if is_space else \
        f"{path.stem}: {n} points over {_duration(span)} of show time"
    draw.text((margin // 2, margin // 3), title, fill=(235, 235, 245, 255), font=font)
    subtitle = f"{used} of the {what}; the path runs in time from start (faint) to end (bright)"
    if sims is not None:
        subtitle = f"{used} of the {what}; shaded by similarity to \"{near_text[:60]}\" (grey: no embedding)"
    draw.text((margin // 2, margin // 3 + font.size + 6), subtitle, fill=(170, 170, 190, 255), font=small)
    lx, ly = margin // 2, h - margin // 2 - 10
    for name, col in colours.items():
        draw.rounded_rectangle([lx, ly, lx + 18, ly + 12], 3, fill=col + (255,))
        draw.text((lx + 24, ly - 3), name, fill=(220, 220, 230, 255), font=small)
        lx += 40 + int(draw.textlength(name, font=small))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(out)
    result = {"map": str(out), "points": n, "thumbnails": len(placed), "projection": f"{used} of the {what}",
              "scenes": ", ".join(colours)}
    if sims is not None:
        result["near"] = near_text
        result["embedded"] = int(np.isfinite(sims).sum())
        result["best"] = ", ".join(f"{points[i].t:.1f} s ({points[i].scene})" for i in best)
    if html is not None:
        write_html(Path(html), points, pos / np.array([w, h]), colours, title, result["projection"])
        result["html"] = str(html)
    return result


def _similarities(points: list[Point], near: np.ndarray) -> np.ndarray:
    """Each point's cosine similarity to ``near``, scaled 0..1 from the least to the most similar (NaN where a
    point has no embedding of that width)."""
    out = np.full(len(points), np.nan)
    for i, p in enumerate(points):
        if p.clip is not None and len(p.clip) == len(near):
            out[i] = float(p.clip @ near) / (float(np.linalg.norm(p.clip)) or 1.0)
    ok = np.isfinite(out)
    if not ok.any():
        raise ValueError("--near: no point has a CLIP embedding of the query model's width (`installation archive "
                         "embed` computes them)")
    lo, hi = out[ok].min(), out[ok].max()
    out[ok] = (out[ok] - lo) / (hi - lo) if hi > lo else 1.0
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{margin:0;background:#08080d;color:#ddd;font:14px system-ui,sans-serif;overflow:hidden}}
#hd{{position:fixed;top:0;left:0;right:0;padding:10px 16px;background:#08080dcc;z-index:3}}
#vp{{position:absolute;inset:0;cursor:grab}}#map{{position:absolute;left:0;top:0;width:100vw;height:100vh;
transform-origin:0 0}}.p{{position:absolute;width:8px;height:8px;margin:-4px;border-radius:50%}}
.p:hover{{outline:2px solid #fff;z-index:2}}#tip{{position:fixed;display:none;pointer-events:none;z-index:4;
background:#111a;padding:6px;border:1px solid #555}}#tip img{{width:256px;display:block}}svg{{position:absolute;
inset:0;width:100%;height:100%}}</style></head><body><div id="hd"><b>{title}</b> &mdash; {projection}.
Wheel to zoom, drag to pan, hover a point for its frame. {legend}</div><div id="vp"><div id="map">
<svg viewBox="0 0 1000 1000" preserveAspectRatio="none">{lines}</svg>{dots}</div></div><div id="tip"></div>
<script>
const P={data};const tip=document.getElementById('tip'),map=document.getElementById('map'),vp=document.getElementById('vp');
let s=1,x=0,y=0,drag=null;function upd(){{map.style.transform=`translate(${{x}}px,${{y}}px) scale(${{s}})`}}
vp.addEventListener('wheel',e=>{{e.preventDefault();const k=e.deltaY<0?1.2:1/1.2;x=e.clientX-(e.clientX-x)*k;
y=e.clientY-(e.clientY-y)*k;s*=k;upd()}},{{passive:false}});
vp.addEventListener('mousedown',e=>{{drag=[e.clientX-x,e.clientY-y]}});addEventListener('mouseup',()=>drag=null);
addEventListener('mousemove',e=>{{if(drag){{x=e.clientX-drag[0];y=e.clientY-drag[1];upd()}}
tip.style.left=(e.clientX+16)+'px';tip.style.top=(e.clientY+16)+'px'}});
document.querySelectorAll('.p').forEach(el=>{{el.addEventListener('mouseenter',()=>{{const p=P[el.dataset.i];
tip.innerHTML=(p.img?`<img src="${{p.img}}">`:'')+`t ${{p.t}} s &middot; ${{p.scene}} &middot; seed ${{p.seed}}`;
tip.style.display='block'}});el.addEventListener('mouseleave',()=>tip.style.display='none')}});
</script></body></html>"""


def write_html(out: Path, points: list[Point], uv: np.ndarray, colours: dict[str, tuple[int, int, int]],
               title: str, projection: str) -> None:
    """A self-contained page: every point a dot at its place (thumbnail on hover), the path, zoom and pan."""
    def css(c: tuple[int, int, int]) -> str:
        return "#%02x%02x%02x" % c

    data = [{"t": round(p.t, 2), "scene": p.scene, "seed": p.seed,
             "img": ("data:image/jpeg;base64," + base64.b64encode(p.thumb).decode()) if p.thumb else ""}
            for p in points]
    dots = "".join(f'<div class="p" data-i="{i}" style="left:{u * 100:.3f}%;top:{v * 100:.3f}%;'
                   f'background:{css(colours[p.scene])}"></div>' for i, (p, (u, v)) in enumerate(zip(points, uv)))
    lines = "".join(f'<line x1="{uv[i - 1][0] * 1000:.1f}" y1="{uv[i - 1][1] * 1000:.1f}" x2="{uv[i][0] * 1000:.1f}" '
                    f'y2="{uv[i][1] * 1000:.1f}" stroke="{css(colours[points[i].scene])}" stroke-opacity="0.5" '
                    f'stroke-width="2" vector-effect="non-scaling-stroke"/>'
                    for i in range(1, len(points)) if points[i - 1].session == points[i].session)
    legend = " ".join(f'<span style="color:{css(c)}">&#9632; {htmllib.escape(n)}</span>' for n, c in colours.items())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_PAGE.format(title=htmllib.escape(title), projection=htmllib.escape(projection), legend=legend,
                                lines=lines, dots=dots, data=json.dumps(data)))
