"""Events: every step of a job as a flat dict, to a callback and to logging.

logging is imported on the first event, not at `import rawfetch`.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from . import timing
from .redact import redact_url

_logger: Any = None
# `progress` comes four times a second while bytes arrive: at INFO it floods an agent's log
# (fuel-agent: 69 lines in a 33 s trickle), so it is logged at DEBUG (10); every other
# event (a few per attempt: bounded by retries) at INFO (20). on_event still gets them all.
LOG_LEVELS = {"progress": 10}


def emit(on_event: Optional[Callable[[dict], Any]], name: str, **fields: Any) -> dict:
    """Send one event to the callback (if any) and to logging.getLogger("rawfetch")."""
    global _logger
    event = {"event": name, "time": round(timing.wall(), 6)}
    event.update((key, _shown(value)) for key, value in fields.items())
    if on_event is not None:
        on_event(event)
    if _logger is None:
        import logging  # lazy: loaded on the first event, not at `import rawfetch`
        _logger = logging.getLogger("rawfetch")
    level = LOG_LEVELS.get(name, 20)
    if _logger.isEnabledFor(level):
        _logger.log(level, "%s %s", name,
                    " ".join("%s=%s" % (key, event[key]) for key in fields))
    return event


def _shown(value: Any) -> Any:
    """URLs in events (url, mirror, segments, messages) never carry a password."""
    if isinstance(value, str):
        return redact_url(value) if "@" in value else value
    if isinstance(value, (list, tuple)):
        return [_shown(item) for item in value]
    return value


def wants_events(options: Any) -> bool:
    """Cheap check before building an event: a callback, or logging at INFO for us."""
    if options.on_event is not None:
        return True
    logging = sys.modules.get("logging")
    return logging is not None and logging.getLogger("rawfetch").isEnabledFor(20)


def reporter(options: Any) -> Callable[..., None]:
    """emit() bound to the job's options, doing nothing when no one listens."""
    def report(name: str, **fields: Any) -> None:
        if wants_events(options):
            emit(options.on_event, name, **fields)
    return report
