"""Search by meaning: the archived moments (or a space file's images) most like a text or a picture.

Every archived point may carry a CLIP embedding of its frame (the vision part's, or ``archive embed``'s); a space
file built with ``--clip`` holds one per image. A query is embedded by the same CLIP model (``[vision]``) and
compared with every row by cosine similarity: an exact search, one float32 matrix-vector product and a partial sort
(:func:`top`). ``installation bench --search`` times it at scale (:func:`search_bench`), beside an optional faiss
index with its recall against the exact answer.
"""

from __future__ import annotations

import base64
import html as htmllib
import io
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .store import Store

log = logging.getLogger(__name__)

SHEET_COLUMNS = 5
SHEET_EDGE = 160  # pixels: a contact sheet's cell


@dataclass(frozen=True)
class Hit:
    """One search result: an archived point (``kind`` "point", ``id`` its row) or a space image (``kind`` "image",
    ``id`` its index in the file, ``name`` its file name)."""

    score: float
    kind: str
    id: int
    session: int | None = None
    t: float | None = None
    scene: str | None = None
    seed: int | None = None
    tau: float | None = None
    name: str = ""
    thumb: bytes | None = None  # JPEG

    def row(self) -> dict[str, Any]:
        """The hit as JSON-able figures (no thumbnail)."""
        d = asdict(self)
        d.pop("thumb")
        d["score"] = round(self.score, 4)
        return {k: v for k, v in d.items() if v not in (None, "")}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (a zero row stays zero)."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def top(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: the row indices, best first (ties: the lower index first), and scores."""
    n = len(matrix)
    if n == 0 or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = matrix @ np.asarray(query, matrix.dtype)
    k = min(k, n)
    idx = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return idx.astype(np.int64), scores[idx].astype(np.float32)


INDEX_MIN = 200_000  # rows from which a live search uses an IVF index, when faiss is installed
NPROBE = 32  # lists an IVF search visits (recall 1.00 at 1 M in `bench --search`)


def build_ivf(matrix: np.ndarray) -> Any:
    """A faiss IVF index (inner product, sqrt(N) lists, trained on a sample) holding ``matrix``'s rows; ImportError
    without faiss (the ``search`` extra)."""
    import faiss

    n, d = matrix.shape
    nlist = int(max(16, min(4096, math.sqrt(n))))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(matrix[np.random.default_rng(1).choice(n, min(n, 40 * nlist), replace=False)])
    ivf.add(matrix)
    ivf.nprobe = NPROBE
    return ivf


class Rows:
    """Unit rows searched by inner product: exactly (:func:`top`) until they number ``index_min``, then, when faiss
    is installed, by an IVF index built once and added to as rows arrive."""

    def __init__(self, width: int, index_min: int = INDEX_MIN) -> None:
        self.matrix = np.zeros((0, width), np.float32)
        self.index_min = index_min
        self.index: Any = None
        self.tried = False

    def __len__(self) -> int:
        return len(self.matrix)

    def add(self, rows: np.ndarray) -> None:
        rows = unit_rows(rows)
        if not len(rows):
            return
        self.matrix = np.concatenate([self.matrix, rows])
        if self.index is not None:
            self.index.add(rows)
        elif len(self.matrix) >= self.index_min and not self.tried:
            self.tried = True
            try:
                t0 = time.perf_counter()
                self.index = build_ivf(self.matrix)
                log.info("search: an IVF index of %d rows built in %.1f s", len(self.matrix),
                         time.perf_counter() - t0)
            except ImportError:
                log.info("search: %d rows searched exactly (pip install faiss-cpu for an index)", len(self.matrix))

    def top(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            return top(self.matrix, query, k)
        scores, idx = self.index.search(np.asarray(query, np.float32)[None], k)
        keep = idx[0] >= 0
        return idx[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)


class QueryEncoder:
    """A text or a picture as a unit CLIP embedding, by the model ``[vision]`` names (loaded on first use)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from ..vision.clip import ClipModel

            self._model = ClipModel(self.settings)
        return self._model

    def text(self, text: str) -> np.ndarray:
        return unit_rows(self.model.embed_texts([text])[0])

    def image(self, path: str | Path) -> np.ndarray:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"--image {path}: not a readable picture")
        return unit_rows(self.model.embed_frames([img[:, :, ::-1]])[0])


def check_width(what: str, width: int, query: np.ndarray) -> None:
    if width and width != query.shape[-1]:
        raise ValueError(f"{what} holds {width}-wide CLIP embeddings but the query model gives {query.shape[-1]}: "
                         "search with the CLIP model that made them ([vision] in the config)")


def search_archive(path: str | Path, query: np.ndarray, k: int = 20, session: int | None = None,
                   thumbs: bool = True) -> tuple[list[Hit], dict[str, int]]:
    """The ``k`` archived points most like ``query`` (a unit embedding), and how many points were searched and
    how many have no embedding yet."""
    store = Store(path, readonly=True)
    try:
        if session is not None:
            store.session(session)  # KeyError: no such session
        ids, with_clip, matrix = store.embeddings(session)
        check_width(str(path), matrix.shape[1] if len(matrix) else 0, query)
        idx, scores = top(unit_rows(matrix) if len(matrix) else matrix, query, k)
        points = store.points_by_id(with_clip[idx], with_thumbs=thumbs)
    finally:
        store.close()
    hits = [Hit(float(s), "point", int(i), p.session, p.t, p.scene, p.seed, p.tau, thumb=p.thumb)
            for i, s in zip(with_clip[idx], scores) if (p := points.get(int(i))) is not None]
    return hits, {"points": len(ids), "embedded": len(with_clip), "missing": len(ids) - len(with_clip)}


def space_embeddings(space: Any, path: str | Path) -> np.ndarray:
    """A space file's CLIP embeddings (unit rows); ValueError when it was built without ``--clip``."""
    kind = str(space.meta.get("embedding", ""))
    if not kind.startswith("clip:"):
        raise ValueError(f"{path} was built without --clip (its embeddings are {kind or 'unknown'}): rebuild it "
                         "with `installation space build ... --clip MODEL` to search it by meaning")
    return unit_rows(space.embeddings)


def search_space(path: str | Path, query: np.ndarray, k: int = 20) -> list[Hit]:
    """The ``k`` images of a space file most like ``query``."""
    import cv2

    from ..spaces.space import load_space

    space = load_space(path)
    matrix = space_embeddings(space, path)
    check_width(str(path), matrix.shape[1], query)
    idx, scores = top(matrix, query, k)
    hits = []
    for i, s in zip(idx, scores):
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(space.thumbnails[i][..., ::-1]))
        hits.append(Hit(float(s), "image", int(i), name=space.names[i], thumb=jpeg.tobytes() if ok else None))
    return hits


def caption(h: Hit) -> str:
    if h.kind == "image":
        return f"{h.score:.3f}  {h.name}"
    return f"{h.score:.3f}  {fmt_time(h.t or 0.0)} {h.scene} seed {h.seed}"


def fmt_time(t: float) -> str:
    """Show time as h:mm:ss.s (or m:ss.s)."""
    m, s = divmod(max(t, 0.0), 60.0)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:04.1f}" if h else f"{m}:{s:04.1f}"


def contact_sheet(hits: Sequence[Hit], out: Path, title: str) -> Path:
    """The hits' thumbnails in a grid with their scores, times, scenes and seeds: a PNG, or with ``.html`` a page."""
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        cells = []
        for rank, h in enumerate(hits, 1):
            img = (f'<img src="data:image/jpeg;base64,{base64.b64encode(h.thumb).decode()}">' if h.thumb
                   else '<div class="none">no thumbnail</div>')
            cells.append(f'<figure>{img}<figcaption>{rank}. {htmllib.escape(caption(h))}</figcaption></figure>')
        out.write_text("<!doctype html><meta charset=utf-8><title>" + htmllib.escape(title) + "</title><style>"
                       "body{background:#111;color:#ddd;font:13px sans-serif}figure{display:inline-block;margin:6px;"
                       "width:200px}img{max-width:200px}.none{height:100px;background:#333}</style><h1>"
                       + htmllib.escape(title) + "</h1>" + "".join(cells))
        return out
    from PIL import Image, ImageDraw

    cols = max(1, min(SHEET_COLUMNS, len(hits)))
    rows = max(1, math.ceil(len(hits) / cols))
    cw, ch, head = SHEET_EDGE, SHEET_EDGE + 34, 28
    sheet = Image.new("RGB", (cols * cw, head + rows * ch), (17, 17, 17))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 8), title[:120], fill=(230, 230, 230))
    for k, h in enumerate(hits):
        x, y = (k % cols) * cw, head + (k // cols) * ch
        if h.thumb:
            try:
                img = Image.open(io.BytesIO(h.thumb)).convert("RGB")
                img.thumbnail((cw - 8, cw - 8))
                sheet.paste(img, (x + (cw - img.width) // 2, y + (cw - img.height) // 2))
            except Exception:  # noqa: BLE001 - a damaged thumbnail leaves its cell empty
                pass
        text = caption(h)
        draw.text((x + 4, y + cw), f"{k + 1}. {text[:26]}", fill=(220, 220, 220))
        if len(text) > 26:
            draw.text((x + 4, y + cw + 14), text[26:52], fill=(170, 170, 170))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def clip_width(settings: Any) -> int:
    """The embedding width of the CLIP model ``[vision]`` names, from its architecture (no weights loaded)."""
    import json

    if settings.model_config_file:
        cfg = json.loads(Path(settings.model_config_file).read_text())
    else:
        import open_clip

        cfg = open_clip.get_model_config(settings.model)
        if cfg is None:
            raise ValueError(f"open_clip has no model {settings.model!r}: give --dim")
    return int(cfg["embed_dim"])


# -- scale -------------------------------------------------------------------------------------------------------
def search_bench(points: int = 1_000_000, dim: int = 512, k: int = 20, queries: int = 5, seed: int = 0,
                 index: str = "auto") -> dict[str, Any]:
    """One top-``k`` query over ``points`` synthetic unit embeddings of width ``dim``: the exact search's time
    (median of ``queries``) and the matrix's memory; with faiss installed (``index`` "auto" or "faiss"), an IVF
    index's build and query time and its recall of the exact top-``k``.

    The embeddings are clustered as an archive's are (a show dwells: frames of one stretch are alike): 4096 random
    centres, each point a centre plus noise (cosine about 0.86 to its centre, 0.74 to a neighbour); each query is a
    stored point plus as much noise again, as a text lies near the frames that show it."""
    import resource

    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((min(4096, points), dim), dtype=np.float32))
    spread = np.float32(0.6 / math.sqrt(dim))
    matrix = np.empty((points, dim), np.float32)
    for a in range(0, points, 65536):  # in chunks: no second full-size temporary
        m = min(65536, points - a)
        block = centres[rng.integers(0, len(centres), m)] + spread * rng.standard_normal((m, dim), dtype=np.float32)
        matrix[a:a + m] = unit_rows(block)
    probes = unit_rows(matrix[rng.integers(0, points, queries)] +
                       spread * rng.standard_normal((queries, dim), dtype=np.float32))
    exact, times = [], []
    top(matrix, probes[0], k)  # warm
    for q in probes:
        t0 = time.perf_counter()
        idx, _ = top(matrix, q, k)
        times.append(time.perf_counter() - t0)
        exact.append(idx)
    log.warning("search bench: exact top-%d of %d x %d in %.1f ms (median of %d)", k, points, dim,
                float(np.median(times)) * 1e3, queries)
    out: dict[str, Any] = {"points": points, "dim": dim, "top": k, "queries": queries,
                           "data": "synthetic, 4096 clusters",
                           "exact_ms": round(float(np.median(times)) * 1e3, 1),
                           "exact_ms_min": round(float(np.min(times)) * 1e3, 1),
                           "matrix_mb": round(matrix.nbytes / 1e6, 1),
                           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if index in ("auto", "faiss"):
        try:
            out.update(_faiss_bench(matrix, probes, exact, k))
        except ImportError:
            if index == "faiss":
                raise ValueError("--index faiss needs faiss: pip install 'installation[search]' (faiss-cpu)") \
                    from None
            out["index"] = "none (pip install faiss-cpu for an IVF index)"
    return out


def _faiss_bench(matrix: np.ndarray, probes: np.ndarray, exact: list[np.ndarray], k: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ivf = build_ivf(matrix)
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {"index": f"faiss IVFFlat nlist {ivf.nlist}", "index_build_s": round(build_s, 1)}
    for nprobe in (8, 32, 128):
        ivf.nprobe = nprobe
        times, recall = [], []
        for q, want in zip(probes, exact):
            t0 = time.perf_counter()
            _, got = ivf.search(q[None], k)
            times.append(time.perf_counter() - t0)
            recall.append(len(set(got[0].tolist()) & set(want.tolist())) / len(want))
        out[f"nprobe_{nprobe}"] = {"ms": round(float(np.median(times)) * 1e3, 2),
                                   "recall": round(float(np.mean(recall)), 3)}
    return out


__all__ = ["Hit", "QueryEncoder", "Rows", "build_ivf", "contact_sheet", "search_archive", "search_bench", "search_space", "top",
           "unit_rows"]
