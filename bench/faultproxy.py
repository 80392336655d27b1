"""A loopback TCP proxy in front of nginx that cuts each connection after N bytes.

    python3 bench/faultproxy.py --upstream 127.0.0.1:PORT --every 64M --action alt \
        [--max-cuts K] [--log PATH]

Prints "PORT <n>" on stdout once listening on 127.0.0.1. Every connection is relayed to
the upstream; after `--every` bytes of the response have been forwarded on that
connection the proxy acts:
    rst    close the client side with SO_LINGER 0 (a TCP RST; unread data is lost)
    fin    close the client side cleanly (FIN: the body ends early)
    alt    connection k gets rst for even k, fin for odd k
    stall  stop forwarding and hold the connection open (silence) until the client
           closes it or --stall-max seconds pass
    none   never cut: the fault-free baseline through the same relay
--max-cuts K stops cutting after K cuts (later connections are relayed untouched).
Each cut appends "cut <unix time> <conn#> <bytes forwarded> <action>" to --log.

Relaying uses os.splice (socket -> pipe -> socket, no copy through Python) where the
platform has it, else recv_into/sendall with a 1 MiB buffer. Only loopback is used.
"""
from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import threading
import time

CHUNK = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


class Proxy:
    def __init__(self, upstream, every, action, max_cuts, log, stall_max, use_splice=True):
        self.upstream = upstream
        self.every = every
        self.action = action
        self.max_cuts = max_cuts
        self.log = log
        self.stall_max = stall_max
        self.cuts = 0
        self.conns = 0
        self.lock = threading.Lock()
        self.splice = use_splice and hasattr(os, "splice")
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]

    def serve(self) -> None:
        while True:
            client, _ = self.listener.accept()
            with self.lock:
                index = self.conns
                self.conns += 1
            threading.Thread(target=self.handle, args=(client, index), daemon=True).start()

    def _decide(self, index: int):
        with self.lock:
            if self.action == "none" or (self.max_cuts is not None
                                         and self.cuts >= self.max_cuts):
                return None
            self.cuts += 1
        if self.action == "alt":
            return "rst" if index % 2 == 0 else "fin"
        return self.action

    def handle(self, client: socket.socket, index: int) -> None:
        up = None
        try:
            up = socket.create_connection(self.upstream)
            for s in (client, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._forward_request(client, up):
                return
            action = self._decide(index) if self.every else None
            limit = self.every if action else None
            sent = self._relay(up, client, limit)
            if action is None or sent < (limit or 0):
                return  # upstream finished first: nothing to cut
            if self.log:
                with self.lock, open(self.log, "a") as f:
                    f.write("cut %.6f %d %d %s\n" % (time.time(), index, sent, action))
            if action == "rst":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif action == "stall":
                client.settimeout(self.stall_max)
                try:
                    while client.recv(65536):
                        pass
                except OSError:
                    pass
        except OSError:
            pass
        finally:
            for s in (client, up):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    @staticmethod
    def _forward_request(client: socket.socket, up: socket.socket) -> bool:
        """Forward one request head (GET, no body). Done in this thread, not a pump
        thread: a close() racing a recv() blocked in another thread is deferred by the
        kernel, and neither the RST nor the FIN would go out."""
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                return False
            head += data
            if len(head) > 1 << 16:
                return False
        up.sendall(head)
        return True

    def _relay(self, src: socket.socket, dst: socket.socket, limit) -> int:
        sent = 0
        if self.splice:
            r, w = os.pipe()
            try:
                import fcntl
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, CHUNK)
            except (ImportError, AttributeError, OSError):
                pass
            try:
                while limit is None or sent < limit:
                    want = CHUNK if limit is None else min(CHUNK, limit - sent)
                    got = os.splice(src.fileno(), w, want)
                    if not got:
                        break
                    left = got
                    while left:
                        left -= os.splice(r, dst.fileno(), left)
                    sent += got
            finally:
                os.close(r)
                os.close(w)
            return sent
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while limit is None or sent < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - sent)
            got = src.recv_into(view[:want])
            if not got:
                break
            dst.sendall(view[:got])
            sent += got
        return sent


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT (loopback)")
    p.add_argument("--every", default="64M", help="bytes forwarded per connection before a cut")
    p.add_argument("--action", default="alt", choices=("rst", "fin", "alt", "stall", "none"))
    p.add_argument("--max-cuts", type=int, default=None)
    p.add_argument("--log", default=None)
    p.add_argument("--stall-max", type=float, default=60.0)
    p.add_argument("--no-splice", action="store_true")
    args = p.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        p.error("the upstream must be on loopback")
    proxy = Proxy((host, int(port)), parse_size(args.every), args.action, args.max_cuts,
                  args.log, args.stall_max, not args.no_splice)
    sys.stdout.write("PORT %d\n" % proxy.port)
    sys.stdout.flush()
    try:
        proxy.serve()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
