"""Image to text: a vocabulary embedded once, each frame's top-k terms and a one-line description, and the drift
guard of the describe loop (no term repeated within the last N descriptions)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np


def load_vocabulary(path: str | Path) -> dict[str, list[str]]:
    """Terms by group, in file order: ``[group]`` lines start a group, ``#`` starts a comment, blank lines skipped.
    Terms before any group header are in the group ``term``. ValueError (naming the file) when there are none."""
    groups: dict[str, list[str]] = {}
    group = "term"
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip() or "term"
            continue
        terms = groups.setdefault(group, [])
        if line not in terms:
            terms.append(line)
    groups = {g: t for g, t in groups.items() if t}
    if not groups:
        raise ValueError(f"vocabulary {path} has no terms")
    return groups


@dataclass(frozen=True)
class Reading:
    """What a frame looks like: the top-k (term, similarity) pairs and, per group, terms best first."""

    top: tuple[tuple[str, float], ...]
    ranked: Mapping[str, tuple[str, ...]]

    @property
    def description(self) -> str:
        """One line: the best term of each group (``subject, material, style, mood``)."""
        return describe_line(self.ranked)


def pick(ranked: Mapping[str, Sequence[str]], avoid: Iterable[str] = ()) -> list[str]:
    """The best term of each group that is not in ``avoid`` (the best one when every term is)."""
    avoid = set(avoid)
    return [next((t for t in terms if t not in avoid), terms[0]) for terms in ranked.values() if terms]


def describe_line(ranked: Mapping[str, Sequence[str]], avoid: Iterable[str] = ()) -> str:
    """The one-line description: :func:`pick` joined by commas."""
    return ", ".join(pick(ranked, avoid))


class Describer:
    """Ranks a vocabulary's terms by a frame embedding's cosine similarity (both L2-normalised)."""

    def __init__(self, groups: Mapping[str, Sequence[str]], term_embeddings: np.ndarray, top_k: int = 5,
                 per_group: int = 8) -> None:
        self.groups = {g: list(t) for g, t in groups.items()}
        self.terms = [t for ts in self.groups.values() for t in ts]
        self.group_of = np.array([i for i, ts in enumerate(self.groups.values()) for _ in ts])
        self.emb = np.asarray(term_embeddings, np.float32)
        if self.emb.shape[0] != len(self.terms):
            raise ValueError(f"{len(self.terms)} terms but {self.emb.shape[0]} embeddings")
        self.top_k = top_k
        self.per_group = per_group

    def read(self, image_embedding: np.ndarray) -> Reading:
        sims = self.emb @ np.asarray(image_embedding, np.float32).reshape(-1)
        order = np.argsort(-sims, kind="stable")
        top = tuple((self.terms[i], round(float(sims[i]), 4)) for i in order[: self.top_k])
        ranked = {}
        for gi, group in enumerate(self.groups):
            idx = [i for i in order if self.group_of[i] == gi][: self.per_group]
            ranked[group] = tuple(self.terms[i] for i in idx)
        return Reading(top, ranked)


class DriftGuard:
    """Remembers the terms of the last ``n`` descriptions; a new description avoids them where it can."""

    def __init__(self, n: int) -> None:
        self._recent: deque[tuple[str, ...]] = deque(maxlen=max(n, 0) or None)
        self.n = n

    def next(self, ranked: Mapping[str, Sequence[str]]) -> str:
        avoid = {t for d in self._recent for t in d} if self.n else set()
        words = pick(ranked, avoid)
        if self.n:
            self._recent.append(tuple(words))
        return ", ".join(words)
