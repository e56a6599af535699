"""Rendering: frame hand-off between threads, the decoder guard, the GL presenter, targets and recording."""
