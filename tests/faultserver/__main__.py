"""Run FaultServer standalone, for poking a client by hand.

    python3 -m tests.faultserver --size 64M --script "rst@1M,normal" --log
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import List, Optional, Sequence

from . import actions as A
from .body import make_body
from .model import Disconnect, Request
from .server import FaultServer
from .tls import MODES

SCRIPT_HELP = """\
script DSL: comma-separated actions; connection N gets action N, the last
repeats. Sizes/offsets accept K, M, G suffixes (powers of 1024).
  normal                      serve correctly
  rst@AT                      RST after AT body bytes
  fin@AT                      FIN after AT body bytes (short body)
  stall@AT[:SECONDS]          go silent after AT bytes (default: forever)
  trickle@AT[:GAP[:STEP]]     then STEP bytes every GAP s (0.5, 1)
  silence[:SECONDS]           read the request, never answer
  status:CODE                 empty response with that status
  redirect:CODE:LOCATION      3xx to LOCATION (no commas in it)
  wrong_content_range         206 with Content-Range start shifted by 1
  ignore_range                200 full body even for Range requests
  tls_stall[:SECONDS]         never answer the TLS ClientHello
example: --script "rst@1000000,fin@5M,stall@0:3,trickle@100:0.2,status:503,normal"
"""


def parse_size(text: str) -> int:
    """'64M' -> 67108864; plain digits are bytes."""
    text = text.strip().upper().rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    if mult != 1:
        text = text[:-1]
    return int(float(text) * mult)


def _opt_float(parts: List[str], i: int, default: Optional[float]
               ) -> Optional[float]:
    return float(parts[i]) if len(parts) > i and parts[i] else default


def parse_action(item: str) -> A.Action:
    """One DSL item -> action; raises ValueError with the bad item."""
    name, _, rest = item.strip().partition("@")
    if rest:
        parts = rest.split(":")
        at = parse_size(parts[0])
        if name in ("rst", "fin"):
            return getattr(A, name)(at)
        if name == "stall":
            return A.stall(at, _opt_float(parts, 1, None))
        if name == "trickle":
            step = int(parts[2]) if len(parts) > 2 else 1
            return A.trickle(at, _opt_float(parts, 1, 0.5) or 0.0, step)
        raise ValueError("unknown script item %r" % item)
    name, _, arg = item.strip().partition(":")
    if name == "normal":
        return A.normal()
    if name in ("silence", "tls_stall"):
        return getattr(A, name)(float(arg) if arg else None)
    if name == "status":
        return A.status(int(arg))
    if name == "redirect":
        code, _, location = arg.partition(":")
        return A.redirect(int(code), location)
    if name == "wrong_content_range":
        return A.wrong_content_range()
    if name == "ignore_range":
        return A.normal(ignore_range=True)
    raise ValueError("unknown script item %r" % item)


def parse_script(text: str) -> List[A.Action]:
    """Whole DSL string -> list of actions."""
    return [parse_action(item) for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.faultserver",
        description="Fault-injecting HTTP/1.1 test server (serves /img).",
        epilog=SCRIPT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0,
                        help="0 = ephemeral; the URL is printed first on stdout")
    parser.add_argument("--size", default="16M",
                        help="size of the generated body (default 16M)")
    parser.add_argument("--seed", type=int, default=0, help="body seed")
    parser.add_argument("--file", help="serve this file instead of a body")
    parser.add_argument("--script", default="normal", help="see below")
    parser.add_argument("--chunked", action="store_true",
                        help="send the body with Transfer-Encoding: chunked")
    parser.add_argument("--tls", choices=MODES, help="serve HTTPS in this mode")
    parser.add_argument("--log", action="store_true",
                        help="one line per request/disconnect on stderr")
    return parser


def _log_line(rec: object) -> None:
    if isinstance(rec, Request):
        line = "conn=%d %s %s range=%s if-range=%s" % (
            rec.conn, rec.method, rec.target, rec.range, rec.if_range)
    elif isinstance(rec, Disconnect):
        line = "conn=%d end=%s body_bytes=%d %s" % (
            rec.conn, rec.kind, rec.body_bytes_sent, rec.detail)
    else:
        line = repr(rec)
    print(line.rstrip(), file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        script = parse_script(args.script)
    except ValueError as exc:
        print("bad --script: %s" % exc, file=sys.stderr)
        return 2
    if args.file:
        with open(args.file, "rb") as fh:
            data = fh.read()
    else:
        data = make_body(parse_size(args.size), args.seed)
    srv = FaultServer(tls=args.tls, host=args.host, port=args.port,
                      log=_log_line if args.log else None)
    srv.add("/img", data, chunked=args.chunked)
    srv.script(script)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with srv:
        print(srv.url("/img"), flush=True)
        if srv.ca_path:
            print("ca: %s" % srv.ca_path, flush=True)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
