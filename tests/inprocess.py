"""The `rawfetch` command run inside the test process.

`run_cli(*argv)` gives what `python -m rawfetch ARGV` gives (exit code, stdout and stderr
bytes, files) through the same entry point, `rawfetch.cli.main`, with file descriptors 1
and 2 captured as a child's pipes would be. Two reasons: no new interpreter per run, and
the command runs on the test's clock, so with the `vclock` fixture its timeouts, stalls
and max_time take virtual seconds. Tests about the process itself (a signal, `-m`
start-up, a real pipe on stdout) keep spawning a real child.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Callable, Dict, Iterator, List, Optional

from rawfetch import cli


def run_cli(*argv: str, stdout: Optional[IO[Any]] = None, cwd: Optional[str] = None,
            env: Optional[Dict[str, Optional[str]]] = None) -> subprocess.CompletedProcess:
    """`rawfetch ARGV` in this process; `stdout` = a file to write to instead of a pipe,
    `cwd` the directory to run in, `env` variables to set (None: unset) for the run."""
    return run_main(cli.main, *argv, stdout=stdout, cwd=cwd, env=env)


def run_main(main: Callable[[List[str]], None], *argv: str,
             stdout: Optional[IO[Any]] = None, cwd: Optional[str] = None,
             env: Optional[Dict[str, Optional[str]]] = None) -> subprocess.CompletedProcess:
    """A command's `main(argv)` (which ends in sys.exit) in this process."""
    captured = _Captured(stdout)
    with _environment(cwd, env or {}), captured:
        code = _exit_code(main, list(argv))
    return subprocess.CompletedProcess([main.__module__, *argv], code, captured.out,
                                       captured.err)


def _exit_code(main: Callable[[List[str]], None], argv: List[str]) -> int:
    """The code main() gives sys.exit, as the process would end; SIGTERM's handler (the
    command installs its own) is put back."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise AssertionError("%s.main returned without sys.exit" % main.__module__)


@contextmanager
def _environment(cwd: Optional[str], env: Dict[str, Optional[str]]) -> Iterator[None]:
    """The child's working directory and environment, put back afterwards."""
    saved_cwd = os.getcwd()
    saved = {name: os.environ.get(name) for name in env}
    try:
        for name, value in env.items():
            _set(name, value)
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(saved_cwd)
        for name, value in saved.items():
            _set(name, value)


def _set(name: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class _Captured:
    """fds 1 and 2, and sys.stdout/sys.stderr over them, go to temporary files (fd 1 to
    `stdout` when given) for the block; `out` and `err` hold the bytes afterwards."""

    def __init__(self, stdout: Optional[IO[Any]]) -> None:
        self.target = stdout
        self.out = b""
        self.err = b""

    def __enter__(self) -> "_Captured":
        sys.stdout.flush()
        sys.stderr.flush()
        self._files = (self.target or tempfile.TemporaryFile(), tempfile.TemporaryFile())
        self._saved_fds = (os.dup(1), os.dup(2))
        self._saved_streams = (sys.stdout, sys.stderr)
        os.dup2(self._files[0].fileno(), 1)
        os.dup2(self._files[1].fileno(), 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                      write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._saved_streams
        for fd, saved in zip((1, 2), self._saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        out, err = self._files
        if self.target is None:
            out.seek(0)
            self.out = out.read()
            out.close()
        err.seek(0)
        self.err = err.read()
        err.close()
