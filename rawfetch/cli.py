"""The `rawfetch` command: curl-like flags, curl's exit codes, one-line errors."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from . import errors as E
from .options import DEFAULTS

EXIT_USAGE = 2          # argparse's convention (curl uses 2 for init failures too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention
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
    E.ProtocolError: "the server's response is not valid HTTP/1.1",
    E.ChecksumMismatch: "the downloaded bytes differ from the expected checksum",
    E.ResourceChanged: "the file changed on the server during the download; run again",
    E.LocalWriteError: "check free space, permissions and the output path",
    E.TooManyRedirects: "raise --max-redirs or use the final URL",
    E.UnsafeRedirect: "use the redirect's target URL directly if it is trusted",
    E.InvalidRequest: "check the URL, headers and options",
    E.ClientCertificateError: "give the certificate the server expects: --cert FILE "
                              "[--key FILE]",
    E.ProxyResolveError: "check the proxy's host name (-x/--proxy, http_proxy, https_proxy)",
    E.ProxyConnectError: "is the proxy up and reachable? check -x/--proxy or the *_proxy "
                         "variables, or bypass it with --noproxy",
    E.ProxyTunnelError: "the proxy refused the tunnel: check --proxy-user and its access rules",
}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("%r must be a finite number >= 0" % text)
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("%r is not a whole number >= 0" % text)
    return int(text)


def _user_pass(text: str) -> str:
    """USER:PASSWORD; the message never repeats the value (it may be a password)."""
    if ":" not in text:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD (rawfetch never prompts "
                                         "for a password)")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors never echo a password from the command line."""

    argv: List[str] = []

    def error(self, message: str) -> Any:
        from .credentials import redact_argv
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, redact_argv(message, self.argv)))


def _add_access_flags(add: Any) -> None:
    """Proxies, credentials and client certificates (curl's flags and meanings)."""
    add("-x", "--proxy", metavar="URL", default=None,
        help="[http://][USER:PASS@]HOST[:PORT] (port 1080 if none); '' = no proxy; default: the "
        "http_proxy/https_proxy/all_proxy environment variables")
    add("--noproxy", metavar="LIST", default=None, help="hosts, .domains, IPs and CIDR "
        "ranges reached directly ('*' = all); default: no_proxy/NO_PROXY")
    add("-U", "--proxy-user", metavar="USER:PASS", type=_user_pass, default=None,
        help="Basic credentials sent only to the proxy")
    add("-u", "--user", metavar="USER:PASS", type=_user_pass, default=None,
        help="Basic credentials for the origin (over URL userinfo and netrc)")
    add("--netrc", action="store_true", help="origin credentials from $NETRC or ~/.netrc")
    add("--netrc-file", metavar="FILE", default=None, help="origin credentials from FILE")
    add("--cert", metavar="FILE", default=None, help="client certificate, PEM (the key may "
        "be in the same file)")
    add("--key", metavar="FILE", default=None, help="client private key, PEM")
    add("--capath", metavar="DIR", default=None, help="directory of hashed CA certificates "
        "(replaces the system CAs)")
    add("--tlsv1.3", dest="tlsv13", action="store_true", help="require TLS 1.3 or later")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rawfetch", description="Download URL to PATH byte-exact, or fail clearly "
        "within the bounds you set. Exit codes follow curl's where one exists.")
    p.add_argument("url", metavar="URL")
    p.add_argument("mirrors", metavar="MIRROR_URL", nargs="*",
                   help="the same object on other servers, tried in order")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="file to write; '-' streams to stdout")
    add = p.add_argument
    add("--retries", type=_count, default=DEFAULTS["retries"], metavar="N")
    add("--retry-delay", type=_seconds, default=DEFAULTS["retry_delay"], metavar="S")
    add("--retry-max-delay", type=_seconds, default=DEFAULTS["retry_max_delay"], metavar="S")
    add("--dns-timeout", type=_seconds, default=DEFAULTS["dns_timeout"], metavar="S")
    add("--connect-timeout", type=_seconds, default=DEFAULTS["connect_timeout"], metavar="S")
    add("--idle-timeout", type=_seconds, default=DEFAULTS["idle_timeout"], metavar="S")
    add("--speed-limit", type=_count, default=DEFAULTS["speed_limit"], metavar="BYTES")
    add("--speed-time", type=_seconds, default=DEFAULTS["speed_time"], metavar="S")
    add("--max-time", type=_seconds, default=None, metavar="S")
    add("--resolve", action="append", default=[], metavar="HOST:PORT:ADDR[,ADDR...]")
    add("--cacert", metavar="FILE")
    add("-k", "--insecure", action="store_true")
    add("-H", "--header", action="append", default=[], metavar="'Name: value' or @FILE",
        help="extra request header (repeatable); @FILE reads one header per line")
    add("--max-redirs", type=_count, default=DEFAULTS["max_redirs"], metavar="N")
    add("--sha256", metavar="HEX")
    add("--md5", metavar="HEX")
    add("--checksum", metavar="ALGO:HEX")
    add("-q", "--quiet", action="store_true", help="no progress and no summary")
    add("--progress", action="store_true", help="progress line even when not a TTY")
    add("--gunzip", action="store_true", help="decompress on the fly (checksums apply to "
        "the compressed bytes as downloaded)")
    add("--in-place", action="store_true", help="write into an existing file directly "
        "(devices always are)")
    add("--log-json", metavar="FILE", help="write every event as one JSON object per line")
    _add_access_flags(add)
    return p


def options_from(args: argparse.Namespace) -> Dict[str, Any]:
    access = access_options(args)   # first: it expands -H @FILE in args.header
    given = [c for c in (args.checksum, args.sha256 and "sha256:" + args.sha256,
                         args.md5 and "md5:" + args.md5) if c]
    if len(given) > 1:
        raise E.InvalidRequest("give only one of --sha256, --md5, --checksum")
    return dict(retries=args.retries, retry_delay=args.retry_delay,
                retry_max_delay=args.retry_max_delay, dns_timeout=args.dns_timeout,
                connect_timeout=args.connect_timeout, idle_timeout=args.idle_timeout,
                speed_limit=args.speed_limit, speed_time=args.speed_time,
                max_time=args.max_time, resolve=args.resolve, cafile=args.cacert,
                insecure=args.insecure, headers=args.header, max_redirs=args.max_redirs,
                checksum=given[0] if given else None, gunzip=args.gunzip,
                in_place=args.in_place, **access)


def access_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Proxy, credential and TLS options from the flags (-H @FILE expanded here)."""
    from .credentials import expand_header_args
    args.header = expand_header_args(args.header)
    return dict(proxy=args.proxy, no_proxy=args.noproxy, proxy_user=args.proxy_user,
                user=args.user, netrc=args.netrc, netrc_file=args.netrc_file,
                cert=args.cert, key=args.key, capath=args.capath,
                tls_min="1.3" if args.tlsv13 else "1.2")


class Progress:
    """One self-overwriting line on stderr: bytes, rate, ETA, attempt, resume offset."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.next_draw = 0.0
        self.first_offset: Optional[int] = None

    def __call__(self, stream: Any, force: bool = False) -> None:
        now = time.monotonic()
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


def _to_stdout(args: argparse.Namespace, options: Dict[str, Any], progress: Progress) -> Any:
    """Stream to fd 1; bytes already written can't be taken back, so a change of the
    object mid-stream is an error (exit 91), never a duplicate. A checksum is computed
    in a worker thread over two alternating buffers, as download() does."""
    worker, reader = _open_for_stdout(args, options)
    views = [memoryview(bytearray(1 << 20)) for _ in range(2 if worker else 1)]
    stream = getattr(reader, "stream", reader)
    turn = 0
    try:
        with reader:
            while True:
                view = views[turn]
                if worker is not None:
                    worker.drain(keep=1)
                    turn ^= 1
                size = reader.readinto(view)
                if not size:
                    return stream
                _write_stdout(view[:size])
                progress(stream)
    finally:
        if worker is not None:
            worker.close()


def _open_for_stdout(args: argparse.Namespace, options: Dict[str, Any]) -> Tuple[Any, Any]:
    from .resume import Stream, open as open_stream
    if not options.get("checksum") or options.get("gunzip"):
        return None, open_stream(args.url, urls=args.mirrors, **options)
    from .digest import HashWorker, new_hasher
    from .options import Options
    from .policy import parse_checksum
    opts = Options(**options)
    worker = HashWorker(new_hasher(parse_checksum(opts.checksum)[0]))
    stream = Stream(args.url, opts, hasher=worker, mirrors=args.mirrors)
    try:
        return worker, stream.start()
    except BaseException:
        stream.close()
        worker.close()
        raise


def _write_stdout(chunk: memoryview) -> None:
    try:
        while chunk:
            chunk = chunk[os.write(1, chunk):]
    except OSError as exc:
        raise E.LocalWriteError("writing to stdout failed: %s" % exc.strerror) from None


class JsonLog:
    """--log-json: one JSON object per event and line, flushed at once (a killed agent's
    log is complete up to the last step)."""

    def __init__(self, path: str, secrets: Any = ()) -> None:
        import json
        self._dumps = json.dumps
        self._secrets = secrets
        try:
            self._file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise E.LocalWriteError("cannot open --log-json %s: %s" % (path, exc.strerror))

    def __call__(self, event: Dict[str, Any]) -> None:
        from .credentials import redact_text
        self._file.write(redact_text(self._dumps(event, default=str), self._secrets) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def run(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    show = not args.quiet and (args.progress or sys.stderr.isatty())
    progress = Progress(show)
    log: Optional[JsonLog] = None
    secrets: Any = ()
    try:
        options = options_from(args)
        secrets = _secrets(args, options)
        if args.log_json:
            log = JsonLog(args.log_json, secrets)
            options["on_event"] = log
        summary, digest = _execute(args, options, progress)
    except E.FetchError as exc:
        progress.end()
        hint = next((h for cls, h in HINTS.items() if type(exc) is cls), None) or next(
            (h for cls, h in HINTS.items() if isinstance(exc, cls)), "")
        from .credentials import redact_text
        sys.stderr.write(redact_text("rawfetch: error %d: %s%s\n" % (
            exc.exit_code, exc, " -- hint: " + hint if hint else ""), secrets))
        return exc.exit_code
    except KeyboardInterrupt:
        progress.end()
        sys.stderr.write("rawfetch: interrupted\n")
        return EXIT_INTERRUPTED
    finally:
        if log is not None:
            log.close()
    progress.end()
    if not args.quiet:
        sys.stderr.write("rawfetch: %s%s\n" % (summary, " " + digest if digest else ""))
    return 0


def _secrets(args: argparse.Namespace, options: Dict[str, Any]) -> Any:
    """Every secret on this command line, masked in whatever the command writes."""
    from .credentials import secrets_of
    from .options import Options
    return secrets_of(Options(**options), [args.url] + list(args.mirrors))


def _execute(args: argparse.Namespace, options: Dict[str, Any],
             progress: Progress) -> Tuple[str, Optional[str]]:
    if args.output == "-":
        stream = _to_stdout(args, options, progress)
        return ("%d bytes to stdout, %d attempt(s)" % (stream.offset, stream.attempts),
                stream.digest)
    from .files import download
    result = download(args.url, args.output, urls=args.mirrors, progress=progress, **options)
    summary = "saved %s (%d bytes%s, %d attempt(s), %.2fs)" % (
        result.path, result.bytes, ", %d written" % result.written if args.gunzip else "",
        result.attempts, result.elapsed)
    if len({s.url for s in result.segments}) > 1:
        from .files import segments_summary
        summary += "; served by " + segments_summary(list(result.segments))
    return summary, result.digest


def main(argv: Optional[List[str]] = None) -> None:
    try:
        code = run(argv)
    except Exception as exc:  # last resort: one line, never a traceback
        if os.environ.get("RAWFETCH_DEBUG"):
            raise
        sys.stderr.write("rawfetch: internal error: %s: %s\n" % (type(exc).__name__, exc))
        code = 1
    sys.exit(code)
