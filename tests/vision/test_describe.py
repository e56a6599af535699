"""Describe: vocabulary terms ranked by the model's own similarity, the one-line description, the drift guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from installation.vision.describe import Describer, DriftGuard, describe_line, load_vocabulary
from installation.vision.settings import SHIPPED_VOCABULARY


def test_the_shipped_vocabulary_has_a_few_hundred_terms_in_four_groups():
    groups = load_vocabulary(SHIPPED_VOCABULARY)
    assert list(groups) == ["subject", "material", "style", "mood"]
    assert 200 <= sum(map(len, groups.values())) <= 600


def test_a_vocabulary_file_without_terms_is_refused(tmp_path):
    (tmp_path / "v.txt").write_text("# nothing\n[subject]\n")
    with pytest.raises(ValueError, match="no terms"):
        load_vocabulary(tmp_path / "v.txt")


def test_terms_are_ranked_by_the_models_own_similarity(clip_model):
    groups = {"subject": ["a cat", "a tree", "a ship", "a face"], "material": ["glass", "wood", "stone"]}
    terms = [t for ts in groups.values() for t in ts]
    describer = Describer(groups, clip_model.embed_texts(terms), top_k=3)
    frame = np.random.default_rng(5).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    reading = describer.read(clip_model.embed_frames([frame])[0])
    # the model's own forward pass, independently: open_clip's encoders, cosine similarity
    with torch.inference_mode():
        img = clip_model.model.encode_image(clip_model.preprocess([frame])).float()
        txt = clip_model.model.encode_text(clip_model.tokenizer(terms)).float()
    sims = torch.nn.functional.normalize(txt, dim=-1) @ torch.nn.functional.normalize(img, dim=-1)[0]
    expected = [terms[i] for i in torch.argsort(sims, descending=True).tolist()]
    assert [t for t, _ in reading.top] == expected[:3]
    assert list(reading.ranked["subject"]) == [t for t in expected if t in groups["subject"]]
    assert reading.description == f"{reading.ranked['subject'][0]}, {reading.ranked['material'][0]}"
    assert all(abs(s - float(sims[terms.index(t)])) < 5e-3 for t, s in reading.top)


def test_the_drift_guard_repeats_no_term_within_n_descriptions():
    ranked = {"subject": ("a cat", "a dog", "a fox", "an owl"), "mood": ("calm", "eerie", "warm", "dark")}
    guard = DriftGuard(2)
    lines = [guard.next(ranked) for _ in range(6)]
    words = [line.split(", ") for line in lines]
    for i in range(2, len(words)):
        assert not set(words[i]) & (set(words[i - 1]) | set(words[i - 2]))
    assert lines[0] == describe_line(ranked) == "a cat, calm"
    assert DriftGuard(0).next(ranked) == DriftGuard(0).next(ranked) == "a cat, calm"
