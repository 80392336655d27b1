"""Help that answers questions (one table behind --help and the README), --version, -O."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import List

import pytest

import rawfetch
from rawfetch import cli, cliopts
from rawfetch.options import DEFAULTS
from tests.inprocess import run_cli

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    """The command in-process (tests/inprocess.py), on a 100-column terminal."""
    return run_cli(*args, cwd=cwd, env={"COLUMNS": "100"})


def spawn(*args: str) -> subprocess.CompletedProcess:
    """`python -m rawfetch ARGS` as a real child: the entry point itself."""
    env = dict(os.environ, PYTHONPATH=ROOT, COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "rawfetch", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=50, cwd=ROOT)


def help_text() -> str:
    """--help as one line: argparse's wrapping (at spaces and after hyphens) undone."""
    proc = run("--help")
    assert proc.returncode == 0 and proc.stderr == b""
    return flat(proc.stdout.decode())


def flat(text: str) -> str:
    return " ".join(text.split()).replace("- ", "-")


# ---------------------------------------------------------------- --help and the table
def test_no_option_lacks_an_explanation():
    for action in cliopts.build_parser(version="x")._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
        assert len(action.help) > 15, action.option_strings


def test_help_shows_every_option_with_its_default_in_its_group():
    text = help_text()
    starts = {group.key: text.index(" %s: " % group.title) for group in cliopts.GROUPS
              if any(opt.group == group.key for opt in cliopts.OPTIONS)}
    assert list(starts.values()) == sorted(starts.values())
    ends = dict(zip(starts, list(starts.values())[1:] + [text.index("exit codes")]))
    for opt in cliopts.OPTIONS:
        shown = cliopts.default_text(opt)
        marker = "[%s]" % shown if shown.startswith("required") else "[default: %s]" % shown
        lines = [flat("%s %s %s" % (flags, opt.help, marker)) for flags in shown_flags(opt)]
        found = [text.index(line) for line in lines if line in text]
        assert found and starts[opt.group] < found[0] < ends[opt.group], lines


def shown_flags(opt: cliopts.Opt) -> List[str]:
    """How argparse writes the option's own column: `-o PATH, --output PATH` up to
    Python 3.12, `-o, --output PATH` from 3.13 (the metavar once)."""
    if opt.positional:
        return [opt.metavar]
    if opt.action == "store_true":
        return [", ".join(opt.flags)]
    value = "[%s]" % opt.metavar if opt.nargs == "?" else opt.metavar
    return [", ".join("%s %s" % (flag, value) for flag in opt.flags),
            "%s %s" % (", ".join(opt.flags), value)]


def test_help_defaults_come_from_DEFAULTS():
    args = cliopts.build_parser().parse_args(["http://h/x", "-o", "x"])
    options = cli.options_from(args)
    for keyword, value in options.items():
        assert value == DEFAULTS[keyword] or list(value) == list(DEFAULTS[keyword]), keyword
    for opt in cliopts.OPTIONS:
        if opt.keyword and opt.parse is not None and DEFAULTS[opt.keyword] is not None \
                and opt.shown_default is None:   # e.g. limit_rate 0 reads "none"
            assert "[default: %g]" % DEFAULTS[opt.keyword] in cliopts._help_line(opt)


def test_every_flag_keyword_is_an_options_keyword():
    keywords = [opt.keyword for opt in cliopts.OPTIONS if opt.keyword]
    assert set(keywords) <= set(DEFAULTS) and len(keywords) == len(set(keywords))
    dests = [opt.dest for opt in cliopts.OPTIONS]
    assert len(dests) == len(set(dests))


def test_help_lists_every_exit_code():
    text = help_text()
    codes = {0, 2, 130}
    pending = list(rawfetch.FetchError.__subclasses__())
    while pending:
        cls = pending.pop()
        codes.add(cls.exit_code)
        pending.extend(cls.__subclasses__())
    epilog = text[text.index("exit codes"):]
    for code in codes:
        assert " %d " % code in epilog, code


def test_readme_option_table_matches_the_table():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    start, end = cliopts.readme_block(readme)
    assert readme[start:end] == "\n" + cliopts.render_markdown() + "\n", (
        "README option table drifted: run python3 -m rawfetch.cliopts --update README.md")


def test_update_readme_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n%s\nstale | table\n%s\noutro\n"
                      % (cliopts.README_BEGIN, cliopts.README_END))
    assert cliopts.update_readme(str(readme)) is True
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n")
    assert "stale" not in text and "`--idle-timeout S` | 30 |" in text
    assert cliopts.update_readme(str(readme)) is False


def test_version_prints_the_package_version():
    proc = spawn("--version")     # `python -m rawfetch` really starts
    assert proc.returncode == 0
    assert proc.stdout.decode() == "rawfetch %s\n" % rawfetch.__version__


def test_usage_errors_still_exit_2():
    assert run("http://h/x").returncode == 2                       # no -o, no -O
    proc = run("http://h/x", "-o", "f", "-O")
    assert proc.returncode == 2 and b"exclude each other" in proc.stderr
    assert run("-o", "f").returncode == 2                          # no URL


# ---------------------------------------------------------------- -O/--remote-name
@pytest.mark.parametrize("path,name", [
    ("/images/disk.img", "disk.img"),
    ("/images/disk%20v2.img?token=a/b#part/2", "disk v2.img"),
    ("/d/%C3%A9t%C3%A9.raw", "\u00e9t\u00e9.raw"),
    ("/d/100%25.raw", "100%.raw"),
    ("/d/odd%zz%4", "odd%zz%4"),            # invalid escapes stay as they are, like curl
])
def test_remote_name_saves_under_the_decoded_last_segment(make_server, body, tmp_path,
                                                           path, name):
    srv = make_server()
    srv.add(path.partition("?")[0].partition("#")[0], body)
    proc = run(srv.url(path), "-O", "-q", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(str(tmp_path)) == [name]
    assert (tmp_path / name).read_bytes() == body


@pytest.mark.parametrize("path", [
    "/dir/", "", "/.", "/..", "/a/%2e%2e", "/a%2Fb", "/a%2fb", "/a%5Cb", "/a%00b",
    "/..%2F..%2Fetc%2Fpasswd", "/x/?name=file"])
def test_remote_name_refuses_names_that_escape_or_are_empty(server, tmp_path, path):
    url = "http://127.0.0.1:%d%s" % (server.port, path)
    proc = run(url, "-O", cwd=str(tmp_path))
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert err.startswith("rawfetch: error 3: -O cannot save") and "Traceback" not in err
    assert server.connection_count == 0 and os.listdir(str(tmp_path)) == []


def test_remote_name_function_matches_curl_rules():
    assert cli.remote_name("http://h/a/b.iso") == "b.iso"
    assert cli.remote_name("http://h/a/b.iso#frag") == "b.iso"
    assert cli.remote_name("http://h:8080/a/b%2Biso?x") == "b+iso"
    assert cli.remote_name("http://h/\u00e9.img") == "\u00e9.img"   # encoded, then decoded
    with pytest.raises(rawfetch.InvalidRequest):
        cli.remote_name("http://h/a%2F..")
