"""rawfetch: get a large file over HTTP/1.1 onto disk byte-exact, or fail clearly in time.

Attributes load lazily (PEP 562) so `import rawfetch` costs almost nothing and never
imports ssl, http.client, email or urllib.request.
"""
from __future__ import annotations

from .errors import *  # noqa: F401,F403  (the hierarchy is the cheap, always-needed part)
from .errors import FetchError  # noqa: F401

__version__ = "0.1.0"

_LAZY = {
    "request": "rawfetch.client", "Response": "rawfetch.client",
    "Options": "rawfetch.options", "DEFAULTS": "rawfetch.options",
    "Headers": "rawfetch.http11",
    "open": "rawfetch.resume", "download": "rawfetch.files", "Stream": "rawfetch.resume",
    "RetryPolicy": "rawfetch.retry", "DownloadResult": "rawfetch.files",
}


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError("module 'rawfetch' has no attribute %r" % name)
    import importlib
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
