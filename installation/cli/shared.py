"""What the commands share: the exit status for a wrong config or flag, its one-line message, the log set-up, the
``--size`` type and the command line's ``[output]`` overrides.

Exit status 2 means the config, a scene, a shader or a flag is wrong; the one-line message says which file, which
key and what is allowed. Nothing is opened or loaded before everything has been checked.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from ..files import ConfigError
from ..sizes import parse_size

if TYPE_CHECKING:  # the config is imported by the commands that load a show, not by every importer of --size
    from ..config import ShowSpec

log = logging.getLogger("installation")

EXIT_CONFIG = 2


def start_logging(level: str, spec: ShowSpec | None = None) -> None:
    """stderr always; plus the rotating log file that the config's [log] table names."""
    from ..ops import LogSettings, setup_logging

    if spec is None:
        settings, base, secrets = LogSettings(level=level), None, ()
    else:
        settings, base = spec.config.log.model_copy(update={"level": level}), spec.path.resolve().parent
        secrets = (spec.config.web.token,)  # never in a log line, whatever logs it
    setup_logging(settings, base, secrets=secrets)


def fail(message: str) -> int:
    print(f"installation: {message}", file=sys.stderr)
    return EXIT_CONFIG


def size_arg(text: str):
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def with_output(spec: ShowSpec, args: argparse.Namespace) -> ShowSpec:
    """Apply --size/--fps/--fullscreen/--display over the config's [output]."""
    update = {}
    for key in ("size", "fps", "display"):
        if getattr(args, key, None) is not None:
            update[key] = getattr(args, key)
    if getattr(args, "fullscreen", False):
        update["fullscreen"] = True
    if update:
        from pydantic import ValidationError

        from ..config import OutputConfig

        try:  # validated like the file's own values: --fps 0 gets the same message as fps = 0
            output = OutputConfig.model_validate({**spec.config.output.model_dump(), **update})
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError("command line", f"--{err['loc'][0]}", f"{err['msg']} (got {err['input']!r})") from None
        spec.config = spec.config.model_copy(update={"output": output})
    return spec
