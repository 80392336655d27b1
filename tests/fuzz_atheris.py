"""Coverage-guided fuzz target (atheris/libFuzzer) for rawfetch's sans-IO response parser.

Optional, for long runs; pytest does not collect it (no test_ prefix). The invariant is the
one tests/test_fuzz.py checks: fed whole, one byte at a time or in pieces, the parser gives
the same head and body or the same error class, and raises nothing but FetchError.

    python3 -m pip install atheris
    mkdir -p /tmp/rawfetch-corpus
    python3 tests/fuzz_atheris.py /tmp/rawfetch-corpus -max_len=4096 -atheris_runs=2000000

An empty corpus directory is first filled with the seeds of tests/test_fuzz.py. A crash
leaves crash-<sha1> in the working directory: add its bytes to tests/test_catalogue.py.
Without atheris installed the script says so and exits 0.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    bounds = [0] + sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def one_input(raw: bytes) -> None:
    if len(raw) < 4:
        return
    from tests.test_fuzz import parse  # the suite's own invariant harness
    method = "HEAD" if raw[0] & 1 else "GET"
    cuts = list(raw[1:4])
    data = raw[4:]
    whole = parse([data], method)
    bytewise = parse([data[i:i + 1] for i in range(len(data))], method)
    pieces = parse(split(data, cuts), method)
    if not whole == bytewise == pieces:
        raise AssertionError("split-dependent result for %s %r:\n%r\n%r\n%r"
                             % (method, data, whole, bytewise, pieces))


def seed_corpus(argv: List[str]) -> None:
    """Fill the first corpus directory, if it is empty, with tests/test_fuzz.py's seeds."""
    directory: Optional[str] = next((a for a in argv[1:] if not a.startswith("-")), None)
    if directory is None or not os.path.isdir(directory) or os.listdir(directory):
        return
    from tests.test_fuzz import SEEDS
    for index, data in enumerate(SEEDS):
        with open(os.path.join(directory, "seed-%03d" % index), "wb") as handle:
            handle.write(b"\x00\x10\x20\x30" + data)


def main() -> int:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (python3 -m pip install atheris); nothing to do",
              file=sys.stderr)
        return 0
    sys.path.insert(0, ROOT)
    with atheris.instrument_imports():
        import rawfetch.errors  # noqa: F401
        import rawfetch.http11  # noqa: F401
    seed_corpus(sys.argv)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
