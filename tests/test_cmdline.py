"""Configuration from the kernel command line: the kernel's quoting, rawfetch.* keys,
and the command line's own options winning."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from rawfetch.cmdline import KernelCmdlineError, merge, split_params, to_argv
from tests.inprocess import run_cli

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    """The command in-process (tests/inprocess.py): same exit code and output."""
    return run_cli(*args, cwd=cwd)


# ---------------------------------------------------------------- the kernel's next_arg()
@pytest.mark.parametrize("text,params", [
    ("ro quiet", [("ro", None), ("quiet", None)]),
    ("  root=/dev/sda1\tro \n", [("root", "/dev/sda1"), ("ro", None)]),
    ('h="X-A: b c" y', [("h", "X-A: b c"), ("y", None)]),
    ('"h=X-A: b c" y', [("h", "X-A: b c"), ("y", None)]),       # quotes around the param
    ('h="a"b', [("h", 'a"b')]),           # closing quote not last: kept
    ('h=a"b c"', [("h", 'a"b c"')]),      # quote inside a value groups, is not dropped
    ('h="" y', [("h", ""), ("y", None)]),
    ('h=" y', [("h", " y")]),             # unterminated quote runs to the end
    ('"abc', [("abc", None)]),
    ('"a b"=c', [('a b"', "c")]),         # kernel quirk: the param keeps its inner quote
    ("a= b", [("a", ""), ("b", None)]),
    ("=a", [("=a", None)]),               # kernel quirk: '=' at index 0 is not a separator
    ("a=b=c", [("a", "b=c")]),
    ("a -- rawfetch.url=x", [("a", None)]),   # after "--" the words are init's
    ("a --x", [("a", None), ("--x", None)]),
    ('"', [("", None)]),
    ("", []),
])
def test_split_params_follows_the_kernel(text, params):
    assert split_params(text) == params


def test_to_argv_maps_url_mirrors_options_and_flags():
    text = ('BOOT_IMAGE=/vmlinuz ro rawfetch.url=http://m/img.gz ip=dhcp '
            'rawfetch.mirror=http://a/img.gz rawfetch.idle_timeout=5 rawfetch.gunzip '
            'rawfetch.mirror=http://b/img.gz rawfetch.header="X-Node: rack 7" '
            'rawfetch.in-place=0 rawfetch.insecure=yes rawfetch.output=/dev/sda')
    assert to_argv(text) == [
        "--idle-timeout=5", "--gunzip", "--header=X-Node: rack 7", "--insecure",
        "--output=/dev/sda", "--", "http://m/img.gz", "http://a/img.gz", "http://b/img.gz"]


def test_to_argv_later_url_replaces_and_nothing_without_rawfetch_params():
    assert to_argv("rawfetch.url=http://a/x rawfetch.url=http://b/x") == ["--", "http://b/x"]
    assert to_argv("ro quiet rawfetchx.url=y rawfetch") == []


@pytest.mark.parametrize("text,named", [
    ("rawfetch.bogus=1", "rawfetch.bogus"),
    ("rawfetch.cmdline=/x", "rawfetch.cmdline"),
    ("rawfetch.o=/x", "rawfetch.o"),               # short flags are not keys
    ("rawfetch.idle-timeout", "rawfetch.idle-timeout"),   # needs a value
    ("rawfetch.gunzip=maybe", "rawfetch.gunzip"),
    ("rawfetch.retries=-1", "rawfetch.retries"),
    ("rawfetch.url=", "rawfetch.url"),
    ("rawfetch.mirror=http://a/x", "rawfetch.mirror"),    # a mirror without a URL
])
def test_to_argv_refuses_what_it_cannot_use(text, named):
    with pytest.raises(KernelCmdlineError) as caught:
        to_argv("ro " + text + " quiet")
    assert named in str(caught.value) and caught.value.exit_code == 2


def test_merge_command_line_wins_per_option_and_slot():
    kernel = ('rawfetch.url=http://k/x rawfetch.mirror=http://k2/x rawfetch.output=/k '
              'rawfetch.header="X-K: 1" rawfetch.retries=3 rawfetch.sha256=ab rawfetch.gunzip')
    args = merge(["--cmdline"], kernel)
    assert (args.url, args.mirrors, args.output) == ("http://k/x", ["http://k2/x"], "/k")
    assert (args.header, args.retries, args.sha256, args.gunzip) == (["X-K: 1"], 3, "ab", True)
    args = merge(["http://c/x", "-O", "-H", "X-C: 2", "--md5", "cd", "--cmdline"], kernel)
    assert (args.url, args.mirrors) == ("http://c/x", [])          # source slot replaced
    assert (args.output, args.remote_name) == (None, True)          # output slot replaced
    assert args.header == ["X-C: 2"] and (args.sha256, args.md5) == (None, "cd")
    assert args.retries == 3 and args.gunzip is True                # kept from the kernel
    assert merge(["--cmdline"], "ro").retries == 10                # defaults underneath


# ---------------------------------------------------------------- the command
def test_command_downloads_what_the_kernel_command_line_says(server, body, tmp_path):
    cmdline = tmp_path / "cmdline"
    target = tmp_path / "disk.img"
    cmdline.write_text(
        'BOOT_IMAGE=/boot/vmlinuz initrd=initrd.img console=ttyS0,115200 '
        'rawfetch.url=%s "rawfetch.header=X-Node: rack 7" rawfetch.output=%s '
        'rawfetch.sha256=%s rawfetch.idle_timeout=2 rawfetch.quiet -- rawfetch.bogus\n'
        % (server.url("/img"), target, hashlib.sha256(body).hexdigest()))
    proc = run("--cmdline", str(cmdline))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""                                       # rawfetch.quiet applied
    assert target.read_bytes() == body
    assert server.requests[0].headers["x-node"] == "rack 7"


def test_command_line_options_win_over_the_kernel(server, body, tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("rawfetch.url=http://127.0.0.1:9/nothing rawfetch.output=%s "
                       'rawfetch.header="X-From: kernel" rawfetch.retries=0\n'
                       % (tmp_path / "kernel.img"))
    proc = run(server.url("/img"), "-o", str(tmp_path / "mine.img"), "-H", "X-From: argv",
               "--cmdline=%s" % cmdline, "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mine.img").read_bytes() == body
    assert not (tmp_path / "kernel.img").exists()
    assert server.requests[0].headers["x-from"] == "argv"


@pytest.mark.parametrize("text,fragment", [
    ("ro rawfetch.bogus=1", b"rawfetch.bogus"),
    ("rawfetch.url=http://h/x rawfetch.output=/tmp/x rawfetch.idle-timeout=soon",
     b"rawfetch.idle-timeout: 'soon' is not a number"),
    ("ro quiet", b"URL"),
])
def test_command_usage_errors_exit_2_naming_the_parameter(server, tmp_path, text, fragment):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(text + "\n")
    proc = run("--cmdline", str(cmdline), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2 and fragment in proc.stderr
    assert b"Traceback" not in proc.stderr and server.connection_count == 0


def test_command_unreadable_cmdline_file_exit_2(tmp_path):
    proc = run("--cmdline", str(tmp_path / "missing"))
    assert proc.returncode == 2
    assert b"cannot read the kernel command line" in proc.stderr


def test_proc_cmdline_is_the_default_file():
    """This machine's own kernel command line has no rawfetch.* parameters: --cmdline
    alone reads it and then asks for a URL (exit 2), no crash on its real contents."""
    if not os.path.exists("/proc/cmdline"):
        pytest.skip("no /proc/cmdline here")
    with open("/proc/cmdline") as handle:
        if "rawfetch." in handle.read():
            pytest.skip("this kernel command line carries rawfetch.* parameters")
    proc = run("--cmdline")
    assert proc.returncode == 2 and b"rawfetch.url=" in proc.stderr


def test_an_option_with_choices_works_from_the_kernel():
    """A table row with choices (--decompress) is taken from the kernel as is, checked
    against its choices, and the real command line still wins."""
    assert to_argv("rawfetch.decompress=xz") == ["--decompress=xz"]
    with pytest.raises(KernelCmdlineError, match="rawfetch.decompress: 'lz4' is not one of"):
        to_argv("rawfetch.decompress=lz4")
    args = merge(["--decompress", "auto", "--cmdline"], "rawfetch.decompress=gzip")
    assert args.decompress == "auto"
