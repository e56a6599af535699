"""Image sizes written as "WxH" in configs and on the command line."""

from __future__ import annotations

import re
from typing import Annotated, Any, NamedTuple

from pydantic import BeforeValidator, PlainSerializer

_MAX_SIDE = 8192


class _Size(NamedTuple):
    w: int
    h: int

    def __str__(self) -> str:
        return f"{self.w}x{self.h}"


def parse_size(value: Any) -> _Size:
    """'1280x720', [1280, 720] or a Size -> Size; ValueError with what is allowed otherwise."""
    if isinstance(value, _Size):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if not m:
            raise ValueError(f"expected 'WxH' such as '1280x720', got {value!r}")
        w, h = int(m.group(1)), int(m.group(2))
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        w, h = value
    else:
        raise ValueError(f"expected 'WxH' such as '1280x720', got {value!r}")
    if not (8 <= w <= _MAX_SIDE and 8 <= h <= _MAX_SIDE):
        raise ValueError(f"each side must be within 8..{_MAX_SIDE}, got {w}x{h}")
    return _Size(w, h)


Size = Annotated[_Size, BeforeValidator(parse_size), PlainSerializer(str)]

SizeT = _Size  # the value type, for defaults: SizeT(256, 256)
