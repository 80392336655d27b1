"""Drop-ins for the provisioning agents' downloaders.

fuel-agent: rawfetch.compat.fuel (HttpUrl, GunzipStream), also importable from here, so
`from rawfetch.compat import HttpUrl` keeps working. ironic-python-agent:
rawfetch.compat.ironic.
"""
from __future__ import annotations

from .fuel import (FUEL_DATA_CHUNK_SIZE, GunzipStream, HttpUrl, conf_options,
                   fuel_options)

__all__ = ["HttpUrl", "GunzipStream", "fuel_options", "conf_options", "FUEL_DATA_CHUNK_SIZE"]
