"""The tiny CLIP model (tests/clip_support.py) loaded once for the vision tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def clip_model(tiny_clip):
    from installation.vision.clip import ClipModel

    return ClipModel(tiny_clip.settings())
