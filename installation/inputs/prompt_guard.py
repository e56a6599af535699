"""The prompt guard: prompts from the network are untrusted text, checked before they reach the decoder.

Checks, in order: NFKC normalisation and whitespace collapse, length limit, allowed characters (letters and digits
of any script, spaces, and a configurable punctuation set; control and format characters never pass), and a
blocklist file (one word or phrase per line, ``#`` comments, matched case-insensitively on word boundaries).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class PromptGuardSettings(BaseModel):
    """Limits for prompts received from outside (OSC)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int = Field(default=200, ge=1, le=4000, description="characters, after normalisation")
    allowed_punctuation: str = Field(default=" .,;:!?'\"()-&/+#%*", description="besides letters and digits")
    ascii_only: bool = Field(default=False, description="restrict letters/digits to ASCII")
    blocklist: str | None = Field(default=None, description="path of a blocklist file (relative to base_dir)")


@dataclass(frozen=True)
class GuardResult:
    """The outcome: ``ok`` with the cleaned ``text``, or not ok with a short ``reason``."""

    ok: bool
    text: str = ""
    reason: str = ""


_WS = re.compile(r"\s+")


def load_blocklist(path: Path) -> tuple[str, ...]:
    """Read a blocklist file: one entry per line, blank lines and ``#`` comments ignored, casefolded."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(_WS.sub(" ", unicodedata.normalize("NFKC", line)).casefold())
    return tuple(dict.fromkeys(entries))


class PromptGuard:
    """Validate and clean prompt text; immutable after construction, so any thread may call :meth:`check`."""

    def __init__(self, settings: PromptGuardSettings | None = None, base_dir: str | Path | None = None) -> None:
        self.settings = settings or PromptGuardSettings()
        self._punct = frozenset(self.settings.allowed_punctuation)
        self.blocked: tuple[str, ...] = ()
        if self.settings.blocklist:
            path = Path(self.settings.blocklist)
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            try:
                self.blocked = load_blocklist(path)
            except (OSError, UnicodeDecodeError) as exc:
                # Fail fast at start-up: a configured blocklist that cannot be read is a config error.
                raise ValueError(f"prompt guard: cannot read blocklist file {str(path)!r}: {exc}") from exc
        self._block_re = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(b) for b in self.blocked) + r")(?!\w)")
            if self.blocked
            else None
        )

    def _char_ok(self, ch: str) -> bool:
        if ch in self._punct:
            return True
        if self.settings.ascii_only and not ch.isascii():
            return False
        cat = unicodedata.category(ch)
        return cat[0] in "LN" or cat == "Mn" or cat == "Mc"

    def check(self, text: object) -> GuardResult:
        """Return the cleaned prompt or why it was refused (``type``, ``empty``, ``length``, ``chars``, ``blocked``)."""
        if not isinstance(text, str):
            return GuardResult(False, reason="type")
        # Refuse absurd input before doing any work proportional to it.
        if len(text) > 4 * self.settings.max_length + 64:
            return GuardResult(False, reason="length")
        clean = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()
        if not clean:
            return GuardResult(False, reason="empty")
        if len(clean) > self.settings.max_length:
            return GuardResult(False, reason="length")
        if not all(self._char_ok(c) for c in clean):
            return GuardResult(False, reason="chars")
        if self._block_re is not None and self._block_re.search(clean.casefold()):
            return GuardResult(False, reason="blocked")
        return GuardResult(True, text=clean)
