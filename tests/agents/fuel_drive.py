"""Run by the fuel-agent venv's python (tests/agents/fuel_env.py): one image through
fuel-agent's own code, stock or switched to rawfetch as docs/fuel.md says; prints one
JSON line with what fuel-agent's caller saw.

argv[1] is a JSON spec: mode ("stock" | "rawfetch"), rawfetch_path, adoption (the line
docs/fuel.md appends to fuel_agent/utils/artifact.py), conf (fuel-agent CONF overrides),
uri, target, container ("raw" | "gzip"), size, md5, via ("manager" | "chain"),
expect_len (bytes of the target to digest).

via "manager" calls fuel-agent's own Manager.do_copyimage() (the target must be a block
device: it refuses anything else); via "chain" builds the same Chain do_copyimage builds
(uri, HttpUrl, [GunzipStream], target) and compares the md5 as it does, for a file target.
Nothing of fuel-agent is patched here except by the adoption line itself.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import types


class Kept(logging.Handler):
    """Counts the records fuel-agent's log would show at its default level (INFO)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.info = 0
        self.rawfetch_info = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.info += 1
        if record.name.startswith("rawfetch"):
            self.rawfetch_info += 1


def copy_with_manager(spec: dict) -> None:
    from fuel_agent import manager, objects
    scheme = objects.ImageScheme()
    scheme.add_image(uri=spec["uri"], target_device=spec["target"], format="raw",
                     container=spec["container"], size=spec["size"], md5=spec["md5"])
    agent = manager.Manager.__new__(manager.Manager)   # its __init__ only loads a driver
    agent.driver = types.SimpleNamespace(image_scheme=scheme,
                                         partition_scheme=objects.PartitionScheme())
    agent.do_copyimage()


def copy_with_chain(spec: dict) -> None:
    import fuel_agent.utils.artifact as au
    from fuel_agent import errors
    from fuel_agent.utils import utils
    chain = au.Chain()
    chain.append(spec["uri"])
    chain.append(au.HttpUrl)
    if spec["container"] == "gzip":
        chain.append(au.GunzipStream)
    chain.append(spec["target"])
    chain.process()
    if spec["size"] and spec["md5"]:
        actual = utils.calculate_md5(spec["target"], spec["size"])
        if actual != spec["md5"]:
            raise errors.ImageChecksumMismatchError("md5 %s != %s" % (actual, spec["md5"]))


def digest(path: str, length: int) -> str:
    """sha256 of a file, or of a device's first `length` bytes."""
    hasher = hashlib.sha256()
    is_file = os.path.isfile(path)
    left = None if is_file else length
    with open(path, "rb") as handle:
        while left is None or left > 0:
            block = handle.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            hasher.update(block)
            if left is not None:
                left -= len(block)
    return hasher.hexdigest()


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["mode"] == "rawfetch":
        sys.path.insert(0, spec["rawfetch_path"])
    kept = Kept()
    root = logging.getLogger()
    root.setLevel(logging.INFO)     # fuel-agent's default (debug = False)
    root.addHandler(kept)
    from oslo_config import cfg
    import fuel_agent.utils.artifact as au
    import fuel_agent.utils.utils  # noqa: F401  registers the http_* options
    for name, value in spec["conf"].items():
        cfg.CONF.set_override(name, value)
    if spec["mode"] == "rawfetch":
        exec(spec["adoption"], vars(au))   # as if appended to artifact.py
    started = time.monotonic()
    error = None
    try:
        (copy_with_manager if spec["via"] == "manager" else copy_with_chain)(spec)
    except Exception as exc:   # what fuel-agent's caller (cmd/agent.py) would catch
        error = exc
    elapsed = time.monotonic() - started
    result = {
        "elapsed": round(elapsed, 3),
        "error": None if error is None else "%s.%s" % (type(error).__module__,
                                                       type(error).__qualname__),
        "errno": getattr(error, "errno", None),
        "message": None if error is None else str(error)[:400],
        "digest": digest(spec["target"], spec["expect_len"])
        if os.path.exists(spec["target"]) else None,
        "info_lines": kept.info,
        "rawfetch_info_lines": kept.rawfetch_info,
        "httpurl": "%s.%s" % (au.HttpUrl.__module__, au.HttpUrl.__name__),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
