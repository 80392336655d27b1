"""`rawfetch`'s own command with its event log on stderr.

Why: a realnet test must prove *which* path a real fault took (IdleTimeout, LowSpeed, a
206 resume, a restart), not only that the file ended right. This runs the unchanged
`rawfetch.cli.main` with logging at INFO, so every event is one "event: ..." line.
"""
from __future__ import annotations

import logging
import sys

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="event: %(message)s", stream=sys.stderr)
    from rawfetch.cli import main
    main()
