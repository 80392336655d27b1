"""ironic-python-agent 13.0.0 from PyPI, driven in-process by its own code.

Host side: ipa_python() builds (once) the agent's venv; run_agent() runs one download
in a subprocess of that venv's python, with rawfetch and tests/ on its path from this
worktree. Agent side (`python -m tests.agents.ipa_env SPEC.json`): registers the agent's
options, applies the short timeouts, optionally makes the adoption switch exactly as
docs/ironic.md gives it, calls the agent's own _download_image() or
StandbyExtension._stream_raw_image_onto_device(), and writes what its caller saw (the
exception class and text, the size and length the agent's log line read) as JSON.
Standard library only at import: the agent's venv has no pytest.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

IPA_VERSION = "13.0.0"
IPA_INSTALLS = [["ironic-python-agent==%s" % IPA_VERSION]]   # its full dependency list
                                                             # installs on 3.11
WORKTREE = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 60       # s; one scenario's subprocess (each is bounded far below this)
# Short agent timeouts so faults show in seconds (IntOpt minimums: timeout 1, others 0).
QUICK_CONF = {
    "image_download_connection_timeout": 1,
    "image_download_connection_retries": 3,
    "image_download_connection_retry_interval": 0,
}


def ipa_python(skip: bool = True) -> Path:
    """The venv's python (built once per version); skips the test when PyPI is down
    (skip=False raises conftest.VenvUnavailable instead, for the table generator)."""
    from tests.agents.conftest import build_venv, venv_or_skip
    if skip:
        return venv_or_skip("ironic-python-agent-%s" % IPA_VERSION, IPA_INSTALLS)
    return build_venv("ironic-python-agent-%s" % IPA_VERSION, IPA_INSTALLS)


def run_agent(python: Path, workdir: Path, *, rawfetch: bool, image_info: Dict[str, Any],
              conf: Optional[Dict[str, Any]] = None, device: Optional[str] = None,
              timeout: float = RUN_TIMEOUT) -> Dict[str, Any]:
    """One download by the agent's own code (the file path, or `device`'s raw stream),
    stock or switched to rawfetch. The agent's file path writes to workdir/<image id>
    (it uses tempfile.gettempdir()). Returns the JSON the agent side wrote; a run still
    going after `timeout` seconds is killed and reported as error "killed"."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = dict(rawfetch=rawfetch, image_info=image_info, conf={**QUICK_CONF, **(conf or {})},
                device=device, result=str(workdir / "result.json"))
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, TMPDIR=str(workdir), PYTHONPATH=str(WORKTREE),
               no_proxy="", http_proxy="", https_proxy="", NO_PROXY="",
               HTTP_PROXY="", HTTPS_PROXY="")
    try:
        done = subprocess.run([str(python), "-m", "tests.agents.ipa_env", str(spec_path)],
                              cwd=str(WORKTREE), env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error="killed", error_module=None, elapsed=timeout, size=None,
                    reported=None, rawfetch_loaded=rawfetch, log="", api_error="killed",
                    api_status="killed",
                    message="still running after %g s: killed" % timeout)
    if done.returncode != 0:
        raise RuntimeError("agent subprocess failed (exit %d):\n%s"
                           % (done.returncode, done.stderr[-4000:]))
    result = json.loads(Path(spec["result"]).read_text())
    result["log"] = done.stderr
    return result


def can_loop() -> bool:
    return os.geteuid() == 0 and shutil.which("losetup") is not None


@contextlib.contextmanager
def loop_device(backing: Path, content: bytes) -> Iterator[str]:
    """A loop device over `backing` holding `content` (root only), detached at the end."""
    backing.write_bytes(content)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


# ------------------------------------------------------------------ the agent's side
class _SizeLine(logging.Handler):
    """Keeps the arguments of the agent's "downloaded ... Transferred N bytes" log line,
    which reads bytes_transferred and content_length off the download object."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.fields: Dict[str, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, dict) and "reported" in record.args:
            self.fields = {"size": record.args.get("size"),
                           "reported": record.args.get("reported")}


def _agent(conf_values: Dict[str, Any]) -> Any:
    """The agent's standby module with its options registered and set as the operator
    would (ironic-python-agent.conf / kernel parameters)."""
    from ironic_python_agent import config
    config.populate_config()
    from oslo_config import cfg
    cfg.CONF([], project="ironic-python-agent")
    for name, value in conf_values.items():
        cfg.CONF.set_override(name, value)
    from ironic_python_agent.extensions import standby
    return standby


def adopt_rawfetch() -> None:
    """The operator's adoption step, word for word as README and docs/ironic.md give it."""
    from ironic_python_agent.extensions import standby
    from rawfetch.compat import ironic
    standby.ImageDownload = ironic.ImageDownload


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sizes = _SizeLine()
    logging.getLogger("ironic_python_agent.extensions.standby").addHandler(sizes)
    standby = _agent(spec["conf"])
    if spec["rawfetch"]:
        adopt_rawfetch()
    raised: Dict[str, BaseException] = {}

    def prepare_image() -> str:
        """The agent's download step, as its prepare_image command runs it."""
        try:
            if spec["device"] is None:
                standby._download_image(spec["image_info"])
            else:
                extension = standby.StandbyExtension()
                extension.partition_uuids = {}   # prepare_image() sets it before streaming
                extension._stream_raw_image_onto_device(spec["image_info"], spec["device"])
        except Exception as exc:  # recorded for the result, then the agent's turn
            raised["error"] = exc
            raise
        return "image written"

    from ironic_python_agent.extensions import base
    started = time.monotonic()
    # the agent's own command thread: what its API (and so ironic) reports
    command = base.AsyncCommandResult("prepare_image", {}, prepare_image).start().join()
    error, api_error = raised.get("error"), command.command_error
    result = dict(elapsed=round(time.monotonic() - started, 3), **sizes.fields,
                  error=None if error is None else type(error).__name__,
                  error_module=None if error is None else type(error).__module__,
                  message="" if error is None else str(error)[:3000],
                  api_status=str(command.command_status),
                  api_error=None if api_error is None else api_error.type,
                  rawfetch_loaded="rawfetch" in sys.modules)
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
