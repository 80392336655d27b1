"""The master node ironic points its agent at, as a fault server: one image at the path the
ironic tests use, with a stable ETag (so a resume carries If-Range). Shared by the adapter's
tests (tests/test_compat_ironic.py) and the agents tier (tests/agents/), which differ only
in the image they serve."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from tests.faultserver import FaultServer

IMAGE_PATH = "/images/disk.raw"
IMAGE_ETAG = '"v1"'


@contextlib.contextmanager
def image_origin(body: bytes, **server: Any) -> Iterator[FaultServer]:
    """A started FaultServer (`server`: its options, e.g. tls="ok") serving `body` at
    IMAGE_PATH; stopped on exit."""
    with FaultServer(**server) as srv:
        srv.add(IMAGE_PATH, body, etag=IMAGE_ETAG)
        yield srv
