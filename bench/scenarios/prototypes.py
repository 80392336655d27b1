"""Hot-path changes measured and not adopted (bench/rfvariant.py patches them into
rawfetch at run time; the floor rows use clients.py): kept so the findings can be
re-checked. The adopted changes are measured inside rawfetch by the other scenarios."""
from __future__ import annotations

from typing import List, Tuple

from harness import Client, Harness, mod
from scenarios.pipeline import serve_image

PROTO_TIMEOUT = 120   # s per run: every variant moves the same file as the base


def _groups(h: Harness) -> List[Tuple[str, List[Client]]]:
    url = h.url()

    def rv(variants: str, dest: str, tag: str) -> Client:
        path = None if dest == "null" else h.out("p" + tag)
        return Client(variants, mod("rfvariant") + [variants, url, path or "-"], out=path)

    def fl(name: str, kind: str, out: str, *extra: str) -> Client:
        return _floor(h, name, kind, url, out, *extra)

    return [
        ("buffer size, rawfetch → /dev/null",
         [rv("base", "null", "a"), rv("buf256k", "null", "b"), rv("buf4m", "null", "c")]),
        ("buffer size, rawfetch → file (fsync off to isolate)",
         [rv("nofsync", "file", "a"), rv("buf256k,nofsync", "file", "b"),
          rv("buf4m,nofsync", "file", "c")]),
        ("buffer size, Python floor → /dev/null",
         [fl("floor 1M", "floor", "-"), fl("floor 256K", "floor", "-", "--buf", str(256 << 10)),
          fl("floor 4M", "floor", "-", "--buf", str(4 << 20))]),
        ("SO_RCVBUF 4 MiB (autotuning off), rawfetch → /dev/null",
         [rv("base", "null", "a"), rv("rcvbuf4m", "null", "b")]),
        ("os.write vs buffered file.write, floor → file",
         [fl("floor os.write", "floor", "pw"), fl("floor file.write", "floor-buffered", "pb")]),
        ("fill the buffer before write, rawfetch → /dev/null",
         [rv("base", "null", "a"), rv("fill", "null", "b")]),
    ] + _decode_groups(h)


def _floor(h: Harness, name: str, kind: str, url: str, out: str, *extra: str) -> Client:
    """A clients.py floor writing to h.out(out), or to /dev/null for out "-"."""
    path = None if out == "-" else h.out(out)
    return Client(name, mod("clients") + [kind, url, path or "-"] + list(extra), out=path)


def _decode_groups(h: Harness) -> List[Tuple[str, List[Client]]]:
    """Output per decompress call: the peak-RSS cost of rawfetch's 4 MiB step."""
    serve_image(h)
    gz, xz = h.url("image.gz"), h.url("image.xz")
    steps = [("4M", 4 << 20), ("1M", 1 << 20), ("256K", 256 << 10)]
    return [
        ("decompressed bytes per zlib call (rawfetch: GUNZIP_OUTPUT_STEP = 4 MiB), "
         "floor-gunzip → file",
         [_floor(h, "step " + n, "floor-gunzip", gz, "pz" + n, "--step", str(v))
          for n, v in steps]),
        ("decompressed bytes per lzma call, floor-unxz → file",
         [_floor(h, "step " + n, "floor-unxz", xz, "px" + n, "--step", str(v))
          for n, v in steps[:2]]),
    ]


def run(h: Harness) -> None:
    head = ["prototype", "variant", "wall s", "CPU s", "peak RSS MiB", "wall vs first",
            "CPU vs first"]
    rows: List[List[str]] = []
    for title, clients in _groups(h):
        for c in clients:
            c.timeout = PROTO_TIMEOUT
        s = h.run_series("proto: " + title[:40], clients, reps=h.args.proto_reps)
        base = clients[0].name
        for i, c in enumerate(clients):
            first = title if i == 0 else ""
            if not s.ok(c.name):
                rows.append([first, c.name, "n/a: " + s.errors.get(c.name, "?")[:120],
                             "", "", "", ""])
                continue
            rows.append([first, c.name, "%.3f" % s.med(c.name, "wall"),
                         "%.3f" % s.med(c.name, "cpu"), "%.1f" % (s.med(c.name, "rss") / 1024),
                         "—" if i == 0 else "%.2f×" % s.ratio(c.name, base),
                         "—" if i == 0 else "%.2f×" % s.ratio(c.name, base, "cpu")])
    h.report.table("prototypes: hot-path changes measured, not adopted (yet)", head, rows,
                   ["rfvariant rows run rawfetch's current code with the change patched in "
                    "at run time (bench/rfvariant.py); 'n/a' means the internals it patches "
                    "moved",
                    "ratios are variant ÷ first row of the group, median of per-round pairs; "
                    "< 1.00× is a gain; %d rounds" % h.args.proto_reps])
