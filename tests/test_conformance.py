"""docs/conformance.md, executed: every row of its case table is served verbatim by the fault
server (whole, and one byte per send) to `rawfetch.download()`, and must give the row's
saved bytes or error class and exit code; with curl 7.88 installed, `curl -fsSL` must give
the row's curl exit code. The class table and README's exit-code list must match
rawfetch/errors.py. A row, a class or a code that drifts from the code fails here.
"""
from __future__ import annotations

import codecs
import hashlib
import os
import re
import shutil
import subprocess
from typing import Dict, Iterator, List, NamedTuple

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch.errors import FetchError
from tests.faultserver import FaultServer, actions as A
from tests.test_catalogue import CASE_IDLE, split_params

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "conformance.md")
README = os.path.join(ROOT, "README.md")
FOLLOWED = b"followed"   # the answer to the request a redirect row leads to
FOLLOW = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n" + FOLLOWED
CURL_SERIES = "curl 7.88."   # the curl whose behaviour the curl column records
COMMAND_EXITS = {0, 2, 130, 143}  # success, usage, interrupted: the command's own


def table(marker: str, path: str = DOC) -> List[Dict[str, str]]:
    """The rows of the markdown table between <!-- marker:begin --> and :end, as dicts."""
    text = open(path, encoding="utf-8").read()
    body = text.split("<!-- %s:begin -->" % marker)[1].split("<!-- %s:end -->" % marker)[0]
    lines = [line.strip() for line in body.strip().splitlines()]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:]]


def unquote(cell: str) -> bytes:
    """A `code` cell written with Python byte escapes, as bytes."""
    assert cell.startswith("`") and cell.endswith("`"), cell
    return codecs.escape_decode(cell[1:-1].encode("latin-1"))[0]


class Row(NamedTuple):
    id: str
    data: bytes          # the response, verbatim
    saved: bytes         # the body saved, when exit is 0
    error: str           # the error class name, when exit is not 0
    exit: int
    curl: int


def rows() -> List[Row]:
    found = []
    for cells in table("cases"):
        ok = cells["rawfetch"].startswith("`")
        found.append(Row(cells["case"], unquote(cells["response"]),
                         unquote(cells["rawfetch"]) if ok else b"",
                         "" if ok else cells["rawfetch"], int(cells["exit"]),
                         int(cells["curl"])))
    return found


ROWS = rows()


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


PRODUCTIONS = ("status-", "field-", "value-", "cl-", "te-", "chunk-", "chunk-ext-", "trailer-",
               "location-")   # row id prefixes: status line ... Location


@pytest.mark.parametrize("prefix", PRODUCTIONS)
def test_the_table_has_a_valid_and_an_invalid_case_per_production(prefix):
    assert len(set(row.id for row in ROWS)) == len(ROWS)
    assert set(row.exit == 0 for row in ROWS if row.id.startswith(prefix)) == {True, False}


@pytest.mark.parametrize("row, split", split_params(ROWS))
def test_rawfetch_does_what_the_table_says(srv, tmp_path, row, split):
    srv.script([A.raw(split(row.data)), A.raw(FOLLOW)])
    before = len(srv.requests)
    target = tmp_path / "out"
    try:
        rawfetch.download(srv.url("/case/" + row.id), target, retries=0,
                          idle_timeout=CASE_IDLE)
        outcome = (0, "saved", hashlib.sha256(target.read_bytes()).hexdigest())
    except FetchError as exc:
        assert not target.exists(), "a failed download left its file"
        outcome = (exc.exit_code, type(exc).__name__, "")
    wanted = (row.exit, row.error or "saved",
              hashlib.sha256(row.saved).hexdigest() if row.exit == 0 else "")
    assert outcome == wanted
    asked = [request.target for request in srv.requests[before:]]
    assert len(asked) == (2 if row.exit == 0 and row.saved == FOLLOWED else 1), asked


def _curl_series() -> str:
    if shutil.which("curl") is None:
        return ""
    return subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout


@pytest.mark.skipif(not _curl_series().startswith(CURL_SERIES),
                    reason="the curl column records %s; curl here: %s" % (
                        CURL_SERIES, _curl_series()[:20] or "none"))
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_curl_does_what_the_table_says(srv, tmp_path, row):
    """Every connection curl opens, redirects included, goes to the fault server."""
    srv.script([A.raw(row.data), A.raw(FOLLOW)])
    done = subprocess.run(
        ["curl", "-fsSL", "--max-time", str(CASE_IDLE), "--connect-to",
         "::127.0.0.1:%d" % srv.port, "-o", str(tmp_path / "out"),
         srv.url("/case/" + row.id)], capture_output=True, timeout=2 * CASE_IDLE)
    assert done.returncode == row.curl, done.stderr


# ---------------------------------------------------------------- exit codes

def error_classes() -> Dict[str, type]:
    return {name: getattr(E, name) for name in E.__all__
            if isinstance(getattr(E, name), type) and issubclass(getattr(E, name), FetchError)}


def test_class_table_matches_errors_py():
    documented = {row["class"]: int(row["exit"]) for row in table("classes")}
    assert documented == {name: cls.exit_code for name, cls in error_classes().items()}


def test_readme_exit_code_list_covers_every_code():
    text = open(README, encoding="utf-8").read()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    listed = set(int(code) for code in re.findall(r"\*\*(\d+)\*\*", section))
    codes = set(cls.exit_code for cls in error_classes().values()) | COMMAND_EXITS
    assert listed == codes
