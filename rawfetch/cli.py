"""The `rawfetch` command: curl-like flags, curl's exit codes, one-line errors."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import __version__, errors as E, timing
from .cliopts import OPTIONS, build_parser
from .credentials import expand_header_args, secrets_of
from .options import Options
from .redact import redact_argv, redact_text

EXIT_USAGE = 2          # argparse's convention (curl uses 2 for init failures too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention
EXIT_TERMINATED = 143   # 128 + SIGTERM: what a shell reports for a process it ended
PROGRESS_INTERVAL = 0.25  # s between progress line updates

HINTS: Dict[type, str] = {
    E.DNSError: "check the host name, or pin it with --resolve HOST:PORT:ADDR",
    E.DNSTimeout: "the resolver is slow: raise --dns-timeout or use --resolve",
    E.ConnectError: "is the server up and reachable? --retries/--retry-delay wait longer",
    E.ConnectTimeout: "no answer to connect: check routes/firewalls or raise --connect-timeout",
    E.IdleTimeout: "the server went silent: raise --idle-timeout or --retries",
    E.LowSpeed: "the transfer was too slow: lower --speed-limit or raise --speed-time",
    E.DeadlineExceeded: "the whole job ran out of --max-time",
    E.CertificateError: "pass the server's CA with --cacert FILE (or -k to skip checks)",
    E.TLSHandshakeError: "the server does not speak TLS 1.2+ on this port",
    E.HTTPStatusError: "the server refused the request; check the URL",
    E.IncompleteBody: "the server kept cutting the transfer: raise --retries",
    E.EmptyReply: "the server closed without answering: is it restarting? raise --retries",
    E.IncompleteHead: "the server kept cutting its answer short: raise --retries",
    E.ProtocolError: "the server's response is not valid HTTP/1.1",
    E.ContentEncodingError: "the server compresses this file on the fly: pass --decompress "
                            "auto (or the codec), or turn the server's compression off",
    E.ChecksumMismatch: "the downloaded bytes differ from the expected checksum",
    E.ResourceChanged: "the file changed on the server during the download, or no strong "
                       "validator proved it did not (a --sha256 or --checksum-url lets a "
                       "resume go on); run again",
    E.LocalWriteError: "check free space, permissions and the output path",
    E.TooManyRedirects: "raise --max-redirs or use the final URL",
    E.UnsafeRedirect: "use the redirect's target URL directly if it is trusted",
    E.InvalidRequest: "check the URL, headers and options",
    E.InvariantViolation: "a rawfetch bug: nothing was kept; please report it with --log-json",
    E.ReadBackMismatch: "the device does not keep what is written: check it (dmesg, SMART)",
    E.UnsupportedImageFormat: "convert it with qemu-img convert -O raw, or pass "
                              "--allow-any-format",
    E.ClientCertificateError: "give the certificate the server expects: --cert FILE "
                              "[--key FILE]",
    E.ProxyResolveError: "check the proxy's host name (-x/--proxy, http_proxy, https_proxy)",
    E.ProxyConnectError: "is the proxy up and reachable? check -x/--proxy or the *_proxy "
                         "variables, or bypass it with --noproxy",
    E.ProxyTunnelError: "the proxy refused the tunnel: check --proxy-user and its access rules",
    E.ProxyTunnelClosed: "the proxy hung up on the tunnel: is it restarting? raise --retries",
    E.OutputBusy: "wait for the other writer to finish, or write to another path",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT would raise KeyboardInterrupt, so a job ended by a
    supervisor (systemd, an agent's timeout) cleans up exactly like Ctrl-C: the .part
    and its sidecar stay resumable, a disk's start is zeroed again."""


def _on_sigterm(signum: int, frame: Any) -> None:
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second one must not cut the cleanup
    raise Terminated()


def _interrupted(exc: KeyboardInterrupt) -> int:
    """One line and the shell's code for the signal: 143 for SIGTERM, 130 for SIGINT."""
    if isinstance(exc, Terminated):
        sys.stderr.write("rawfetch: terminated (SIGTERM)\n")
        return EXIT_TERMINATED
    sys.stderr.write("rawfetch: interrupted\n")
    return EXIT_INTERRUPTED


def _handle_sigterm() -> None:
    import signal
    signal.signal(signal.SIGTERM, _on_sigterm)


def options_from(args: argparse.Namespace) -> Dict[str, Any]:
    """open()/download() keywords from the parsed flags: every table row with a keyword
    passes on as it is; the three checksum flags become one `checksum`."""
    given = [c for c in (args.checksum, args.sha256 and "sha256:" + args.sha256,
                         args.md5 and "md5:" + args.md5) if c]
    if len(given) > 1:
        raise E.InvalidRequest("give only one of --sha256, --md5, --checksum")
    options = {opt.keyword: getattr(args, opt.dest) for opt in OPTIONS
               if opt.keyword and not (opt.given_only and getattr(args, opt.dest) is None)}
    options["checksum"] = given[0] if given else None
    options["headers"] = expand_header_args(options["headers"])   # -H @FILE
    if getattr(args, "tlsv1.3", False):
        options["tls_min"] = "1.3"
    return options


def remote_name(url: str) -> str:
    """-O's file name, as curl takes it: the last path segment of the URL, query and
    fragment dropped, percent-decoded. Refused when it could escape the current
    directory or name it: empty, '.', '..', or holding '/', '\\' or NUL once decoded."""
    from .url import parse_url
    segment = parse_url(url).target.partition("?")[0].rpartition("/")[2]
    name = _percent_decode(segment)
    if name in ("", ".", "..") or any(char in name for char in "/\\\0"):
        raise E.InvalidRequest("-O cannot save under %r, the last path segment of the URL; "
                               "give -o PATH" % name, url=url)
    return name


def _percent_decode(text: str) -> str:
    """%XX to bytes (invalid escapes kept as they are, like curl), then a file name."""
    out = bytearray()
    index = 0
    while index < len(text):
        pair = text[index + 1:index + 3]
        if text[index] == "%" and len(pair) == 2 and all(c in _HEX for c in pair):
            out.append(int(pair, 16))
            index += 3
        else:
            out += text[index].encode("utf-8")
            index += 1
    return os.fsdecode(bytes(out))


_HEX = frozenset("0123456789abcdefABCDEF")


class Progress:
    """One self-overwriting line on stderr: bytes, rate, ETA, attempt, resume offset."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = timing.now()
        self.next_draw = 0.0
        self.first_offset: Optional[int] = None

    def __call__(self, stream: Any, force: bool = False) -> None:
        now = timing.now()
        if not self.enabled or (now < self.next_draw and not force):
            return
        self.next_draw = now + PROGRESS_INTERVAL
        if self.first_offset is None:
            self.first_offset = stream.resumed_from
        done, total = stream.offset, stream.size
        rate = max(done - self.first_offset, 0) / max(now - self.started, 1e-6)
        parts = [_size(done) + ("/" + _size(total) if total else "")]
        parts.append(_size(int(rate)) + "/s")
        if total and rate > 0:
            parts.append("ETA %ds" % ((total - done) / rate))
        parts.append("attempt %d" % stream.attempts)
        if stream.resumed_from:
            parts.append("resumed at %s" % _size(stream.resumed_from))
        sys.stderr.write("\r\033[K" + "  ".join(parts))
        sys.stderr.flush()

    def end(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (value, unit)
        value /= 1024
    return str(count)


class JsonLog:
    """--log-json: one JSON object per event and line, flushed at once (a killed agent's
    log is complete up to the last step). A log that cannot be written fails the job
    with exit 23 like any local write error."""

    def __init__(self, path: str) -> None:
        import json
        import threading
        self._dumps = json.dumps
        self._lock = threading.Lock()
        self.secrets: Any = ()      # masked in every line (credentials.redact_text)
        self.path = path
        self._file: Any = None

    def open(self, secrets: Any) -> None:
        """Open the log (before the first event), masking `secrets` in every line."""
        self.secrets = secrets
        with E.mapped("write", path="--log-json " + self.path):
            self._file = open(self.path, "a", encoding="utf-8")

    def __call__(self, event: Dict[str, Any]) -> None:
        line = redact_text(self._dumps(event, default=str), self.secrets) + "\n"
        with self._lock, E.mapped("write", path="--log-json " + self.path):
            self._file.write(line)     # whole lines: disk events come from the worker
            self._file.flush()         # thread, the others from the receiving one

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError:  # cleanup only: each event was flushed, or its failure reported
            pass


def run(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(version="rawfetch " + __version__)
    _redact_usage_errors(parser, argv)
    args = _parse(parser, argv)
    show = not args.quiet and (args.progress or sys.stderr.isatty())
    progress = Progress(show)
    log: Optional[JsonLog] = None
    secrets: Any = ()
    try:
        options = options_from(args)
        if args.log_json:
            log = options["on_event"] = JsonLog(args.log_json)
        opts = Options(**options)        # the run's one Options
        secrets = secrets_of(opts, [u for u in [args.url, args.metalink] if u] + list(args.mirrors))
        if args.remote_name:
            args.output = remote_name(args.url)
        if log is not None:
            log.open(secrets)
        summary, digest = _execute(args, opts, progress)
    except E.FetchError as exc:
        progress.end()
        hint = next((h for cls, h in HINTS.items() if type(exc) is cls), None) or next(
            (h for cls, h in HINTS.items() if isinstance(exc, cls)), "")
        sys.stderr.write(redact_text("rawfetch: error %d: %s%s\n" % (
            exc.exit_code, exc, " -- hint: " + hint if hint else ""), secrets))
        return exc.exit_code
    except KeyboardInterrupt as exc:
        progress.end()
        return _interrupted(exc)
    finally:
        if log is not None:
            log.close()
    progress.end()
    if not args.quiet:
        sys.stderr.write("rawfetch: %s%s\n" % (summary, " " + digest if digest else ""))
    return 0


def _redact_usage_errors(parser: argparse.ArgumentParser, argv: List[str]) -> None:
    """argparse echoes what it could not parse: never a password from the command line
    (credentials.redact_argv masks -u/--proxy-user values, credential -H values, URL
    userinfo and every unrecognized word)."""
    error = parser.error
    parser.error = lambda message: error(redact_argv(message, argv))  # type: ignore


def _parse(parser: argparse.ArgumentParser, argv: List[str]) -> argparse.Namespace:
    """Flags, then the kernel command line under them (--cmdline), then the checks
    argparse cannot express; every usage error exits 2 with argparse's message."""
    args = parser.parse_args(argv)
    if args.cmdline is not None:
        from .cmdline import KernelCmdlineError, merge, read_cmdline
        try:
            args = merge(argv, read_cmdline(args.cmdline))
        except KernelCmdlineError as exc:
            parser.error(str(exc))
    if not args.url and not args.metalink:
        parser.error("the following arguments are required: URL (or --metalink)"
                     + (" (or rawfetch.url= on the kernel command line)" if args.cmdline
                        is not None else ""))
    if not args.url and args.remote_name:
        parser.error("-O takes its name from the URL: give -o PATH with --metalink")
    if args.output is not None and args.remote_name:
        parser.error("-o/--output and -O/--remote-name exclude each other")
    if not args.output and not args.remote_name:
        parser.error("one of -o/--output PATH or -O/--remote-name is required")
    if args.limit_rate and args.speed_limit is not None and args.speed_limit >= args.limit_rate:
        parser.error("--speed-limit %d is at or above --limit-rate %d: every transfer would "
                     "abort as too slow; give a --speed-limit below the rate (or none: the "
                     "default is lowered to half the rate)" % (args.speed_limit,
                                                               args.limit_rate))
    return args


def _execute(args: argparse.Namespace, opts: Options,
             progress: Progress) -> Tuple[str, Optional[str]]:
    """argv's job: the download (or the stream to stdout) and its one-line summary."""
    from .files import download, segments_summary, to_stdout  # lazily: --help and usage
                                                               # errors load no engine
    if args.output == "-":
        result = to_stdout(args.url, urls=args.mirrors, options=opts, progress=progress)
        return ("%d bytes to stdout, %d attempt(s)" % (result.bytes, result.attempts),
                result.digest)
    result = download(args.url, args.output, urls=args.mirrors, options=opts,
                      progress=progress)
    summary = "saved %s (%d bytes%s, %d attempt(s), %.2fs)" % (
        result.path, result.bytes, ", %d written" % result.written
        if result.written != result.bytes else "",
        result.attempts, result.elapsed)
    if len({s.url for s in result.segments}) > 1:
        summary += "; served by " + segments_summary(list(result.segments))
    return summary, result.digest


def main(argv: Optional[List[str]] = None) -> None:
    _handle_sigterm()   # the command's own process only (run() may run in a caller's thread)
    try:
        code = run(argv)
    except Exception as exc:  # last resort: one line, never a traceback
        if os.environ.get("RAWFETCH_DEBUG"):
            raise
        sys.stderr.write("rawfetch: internal error: %s: %s\n" % (type(exc).__name__, exc))
        code = 1
    sys.exit(code)
