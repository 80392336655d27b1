"""The command's options as one declarative table: --help, the README table and the
kernel command line (rawfetch.OPTION=VALUE) are all built from OPTIONS, so they cannot
drift. Defaults come from rawfetch.options.DEFAULTS, never from literals here.

Adding a flag: append one Opt row (with `keyword` when it is an open()/download()
option: cli.options_from then passes it on by itself), then regenerate the README table
with `python3 -m rawfetch.cliopts --update README.md`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .errors import FetchError, InvalidRequest
from .options import DECOMPRESS_KINDS, DEFAULTS, MIRROR_ORDERS, parse_size

README_BEGIN = "<!-- options:begin -->"
README_END = "<!-- options:end -->"
USAGE = ("%(prog)s URL [MIRROR_URL ...] (-o PATH | -O) [options]\n"
         "       %(prog)s --cmdline [FILE] [options]")


def seconds(text: str) -> float:
    """A finite number of seconds >= 0; fractions allowed ("0.05")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("%r must be a finite number >= 0" % text)
    return value


def count(text: str) -> int:
    """A whole number >= 0 (no sign, no fraction)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError("%r is not a whole number >= 0" % text)
    return int(text)


def size(text: str) -> int:
    """Bytes with curl's suffixes: K, M, G (powers of 1024), fractions allowed ("1.5M")."""
    try:
        return parse_size(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def rate(text: str) -> int:
    """--limit-rate: bytes per second, with size()'s suffixes; 0 means no limit."""
    return size(text)


def user_pass(text: str) -> str:
    """USER:PASSWORD; the message never repeats the value (it may be a password)."""
    if ":" not in text:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD (rawfetch never prompts "
                                         "for a password)")
    return text


class Group(NamedTuple):
    key: str
    title: str


class Opt(NamedTuple):
    """One command-line option (or positional when its flag has no leading dash)."""
    flags: Tuple[str, ...]
    group: str
    help: str
    metavar: Optional[str] = None
    parse: Optional[Callable[[str], Any]] = None
    keyword: Optional[str] = None     # open()/download() keyword; default = DEFAULTS[keyword]
    action: str = "store"             # store | store_true | append
    nargs: Optional[str] = None
    shown_default: Optional[str] = None  # when the default is behaviour, not a value
    slot: Optional[str] = None        # options answering one question: the kernel
                                      # command line's value is replaced as a whole
    choices: Optional[Tuple[str, ...]] = None   # the only values accepted
    given_only: bool = False          # passed on only when given (argparse default None),
                                      # so an explicit value can be told from the default

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def long_name(self) -> Optional[str]:
        """The long flag without dashes ("idle-timeout"), the kernel command line key."""
        return next((f[2:] for f in self.flags if f.startswith("--")), None)

    @property
    def dest(self) -> str:
        if self.positional:
            return self.flags[0]
        return (self.long_name or self.flags[0].lstrip("-")).replace("-", "_")


GROUPS: Tuple[Group, ...] = (
    Group("source", "what to fetch"),
    Group("output", "output"),
    Group("retries", "retries and deadlines"),
    Group("network", "network and TLS"),
    Group("credentials", "proxies and credentials"),
    Group("pipeline", "image pipeline"),
    Group("logging", "logging"),
)

OPTIONS: Tuple[Opt, ...] = (
    Opt(("url",), "source", "the file to download (http or https)", "URL", nargs="?",
        shown_default="required", slot="source"),
    Opt(("mirrors",), "source", "the same object on other servers, tried in order "
        "(API: urls=[...])", "MIRROR_URL", nargs="*", shown_default="none", slot="source"),
    Opt(("--mirror-order",), "source", "order the mirrors are tried in: as given, "
        "shuffled per run, or rotated by a hash of --splay-seed (else the host name) so a "
        "rack spreads over them", "|".join(MIRROR_ORDERS), keyword="mirror_order",
        choices=MIRROR_ORDERS),
    Opt(("--cmdline",), "source", "also read rawfetch.url=, rawfetch.mirror=, "
        "rawfetch.OPTION=VALUE from the kernel command line (FILE, else /proc/cmdline); "
        "options given here win", "FILE", nargs="?", shown_default="off"),
    Opt(("-o", "--output"), "output", "file to write ('-' = stdout); it appears only "
        "when complete and verified", "PATH", shown_default="required unless -O",
        slot="output"),
    Opt(("-O", "--remote-name"), "output", "save in the current directory under the "
        "URL's last path segment (percent-decoded; query dropped)", action="store_true",
        slot="output"),
    Opt(("--in-place",), "output", "write into an existing file directly, no .part "
        "(devices always are)", keyword="in_place", action="store_true"),
    Opt(("--retries",), "retries", "failed attempts allowed over the whole job; an "
        "attempt that delivered 1 MiB or more is not charged", "N", count, "retries"),
    Opt(("--retry-delay",), "retries", "base of the exponential backoff (full jitter)",
        "S", seconds, "retry_delay"),
    Opt(("--retry-max-delay",), "retries", "cap of one backoff sleep", "S", seconds,
        "retry_max_delay"),
    Opt(("--max-time",), "retries", "one deadline over everything: DNS, connects, every "
        "attempt and sleep", "S", seconds, "max_time"),
    Opt(("--splay",), "retries", "before the first request wait a random time in "
        "[0, S] (inside --max-time), so a rack does not start at once", "S", seconds,
        "splay"),
    Opt(("--splay-seed",), "retries", "make --splay's delay (and --mirror-order hash) a "
        "fixed function of this text, e.g. the node's host name or MAC", "TEXT",
        keyword="splay_seed", shown_default="random"),
    Opt(("--dns-timeout",), "retries", "one name lookup (getaddrinfo runs in a worker "
        "thread)", "S", seconds, "dns_timeout"),
    Opt(("--connect-timeout",), "retries", "per address; the next address starts 250 ms "
        "after the previous", "S", seconds, "connect_timeout"),
    Opt(("--idle-timeout",), "retries", "longest silence allowed in the TLS handshake, "
        "response head or body", "S", seconds, "idle_timeout"),
    Opt(("--speed-limit",), "retries", "abort an attempt slower than this many bytes/s "
        "over --speed-time (0 disables; with --limit-rate it must stay below the rate)",
        "BYTES", count, "speed_limit", given_only=True),
    Opt(("--speed-time",), "retries", "window the --speed-limit average is taken over",
        "S", seconds, "speed_time"),
    Opt(("--limit-rate",), "network", "most bytes per second, averaged over the whole "
        "job with bursts of about one second's worth (K/M/G = powers of 1024; 0 = none)",
        "RATE", rate, "limit_rate", shown_default="none"),
    Opt(("--resolve",), "network", "pin addresses (repeatable); Host, SNI and "
        "certificate checks keep HOST", "HOST:PORT:ADDR[,ADDR...]", keyword="resolve",
        action="append"),
    Opt(("--cacert",), "network", "PEM bundle that replaces the system CAs", "FILE",
        keyword="cafile", shown_default="system CAs"),
    Opt(("--capath",), "network", "directory of hashed CA certificates (openssl rehash) "
        "that replaces the system CAs", "DIR", keyword="capath", shown_default="system CAs"),
    Opt(("-k", "--insecure"), "network", "skip certificate and hostname verification "
        "(explicit opt-in)", keyword="insecure", action="store_true"),
    Opt(("--tlsv1.3",), "network", "require TLS 1.3 or later (API tls_min=\"1.3\")",
        action="store_true", shown_default="TLS 1.2 or later"),
    Opt(("--cert",), "network", "client certificate, PEM (the key may be in the same "
        "file), for servers that require one", "FILE", keyword="cert"),
    Opt(("--key",), "network", "the client certificate's private key, PEM (unencrypted: "
        "rawfetch never prompts)", "FILE", keyword="key"),
    Opt(("-H", "--header"), "network", "extra request header (repeatable); @FILE reads "
        "one header per line, so a token stays out of argv and ps",
        "'Name: value'|@FILE", keyword="headers", action="append"),
    Opt(("--max-redirs",), "network", "redirects followed; one more is an error (exit "
        "47)", "N", count, "max_redirs"),
    Opt(("-x", "--proxy"), "credentials", "proxy for every URL: [http://][USER:PASS@]"
        "HOST[:PORT] (port 1080 if none); '' = none", "URL", keyword="proxy",
        shown_default="http_proxy, https_proxy, all_proxy"),
    Opt(("--noproxy",), "credentials", "hosts reached directly: names (and their "
        "subdomains), IPs, CIDR ranges, comma-separated; '*' = all", "LIST",
        keyword="no_proxy", shown_default="no_proxy, NO_PROXY"),
    Opt(("-U", "--proxy-user"), "credentials", "Basic credentials sent only to the proxy "
        "(over the proxy URL's)", "USER:PASS", user_pass, "proxy_user"),
    Opt(("-u", "--user"), "credentials", "Basic credentials for the origin (over URL "
        "userinfo and netrc); never prompts, so USER alone is a usage error", "USER:PASS",
        user_pass, "user"),
    Opt(("--netrc",), "credentials", "origin credentials from $NETRC, else ~/.netrc",
        keyword="netrc", action="store_true"),
    Opt(("--netrc-file",), "credentials", "origin credentials from this netrc file (a "
        "missing file means none, as in curl)", "FILE", keyword="netrc_file"),
    Opt(("--gunzip",), "pipeline", "the same as --decompress gzip", keyword="gunzip",
        action="store_true"),
    Opt(("--decompress",), "pipeline", "decompress on the fly: auto picks by the first "
        "bytes' magic and passes anything else through; checksums apply to the bytes as "
        "downloaded", "|".join(DECOMPRESS_KINDS), keyword="decompress",
        choices=DECOMPRESS_KINDS),
    Opt(("--xz-memlimit",), "pipeline", "most memory one xz stream may need (K/M/G = "
        "powers of 1024); a stream needing more is exit 92", "SIZE", size, "xz_memlimit",
        shown_default="256M"),
    Opt(("--decode-threads",), "pipeline", "threads decoding the blocks of a multi-block xz "
        "stream (xz -T0 writes them) in parallel; 1 = one thread, as before", "N",
        count, "decode_threads", shown_default="available cores"),
    Opt(("--checksum-url",), "pipeline", "verify against the image's entry in this "
        "checksum file (GNU, BSD tagged or one bare hash), fetched first with the same "
        "budget", "URL", keyword="checksum_url"),
    Opt(("--checksum-name",), "pipeline", "the entry to use in --checksum-url", "NAME",
        keyword="checksum_name", shown_default="the URL's last path segment"),
    Opt(("--metalink",), "pipeline", "a Metalink 4 (.meta4) file or URL: its mirrors "
        "follow the URLs given, its size, hash and piece hashes verify the download "
        "(docs/metalink.md)", "URL|FILE", keyword="metalink"),
    Opt(("--metalink-name",), "pipeline", "the file, by its name=, to use in a --metalink that lists "
        "several", "NAME", keyword="metalink_name", shown_default="the only one"),
    Opt(("--metalink-location",), "pipeline", "try the --metalink mirrors whose location= "
        "is this ISO 3166-1 country code (two letters) first, each group by priority",
        "CC", keyword="metalink_location", shown_default="by priority alone"),
    Opt(("--preserve-on-error",), "pipeline", "after a failed in-place write, leave the "
        "first MiB as it is instead of zeroing it again (for debugging)",
        keyword="preserve_on_error", action="store_true"),
    Opt(("--allow-any-format",), "pipeline", "write output that starts like qcow2 or VMDK "
        "onto a device or in place anyway (refused otherwise: exit 95)",
        keyword="allow_any_format", action="store_true"),
    Opt(("--verify-written",), "pipeline", "after the final fsync, drop the written range "
        "from the page cache and read it back (exit 93 if it differs)",
        keyword="verify_written", action="store_true"),
    Opt(("--sha256",), "pipeline", "verify the bytes downloaded against this SHA-256",
        "HEX", slot="checksum"),
    Opt(("--md5",), "pipeline", "verify the bytes downloaded against this MD5", "HEX",
        slot="checksum"),
    Opt(("--checksum",), "pipeline", "verify with any hashlib algorithm "
        "(sha512:..., blake2b:...)", "ALGO:HEX", slot="checksum"),
    Opt(("-q", "--quiet"), "logging", "no progress line and no summary (errors still "
        "print one line)", action="store_true"),
    Opt(("--progress",), "logging", "progress line (bytes, rate, ETA, attempt, resume "
        "offset) even when stderr is not a TTY", action="store_true",
        shown_default="TTY only"),
    Opt(("--log-json",), "logging", "append every event as one JSON object per line "
        "(draw it with rawfetch-timeline)", "FILE"),
)


def default_of(opt: Opt) -> Any:
    """The value the option has when not given: DEFAULTS' for API options."""
    if opt.action == "append":
        return list(DEFAULTS[opt.keyword]) if opt.keyword else []
    if opt.given_only:
        return None
    if opt.keyword:
        return DEFAULTS[opt.keyword]
    if opt.action == "store_true":
        return False
    return [] if opt.nargs == "*" else None


def default_text(opt: Opt) -> str:
    """How the default reads in --help and the README."""
    if opt.shown_default is not None:
        return opt.shown_default
    value = DEFAULTS[opt.keyword] if opt.given_only and opt.keyword else default_of(opt)
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == []:
        return "none"
    if isinstance(value, float):
        return "%g" % value
    return str(value)


def build_parser(prog: str = "rawfetch", defaults: bool = True,
                 version: Optional[str] = None) -> argparse.ArgumentParser:
    """argparse from OPTIONS, grouped. defaults=False leaves unset options out of the
    namespace, so a caller can tell what was given (the kernel command line merge)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, usage=USAGE,
        description="Download URL to PATH byte-exact, or fail clearly within the bounds "
        "you set.", epilog=exit_code_summary(FetchError),
        argument_default=None if defaults else argparse.SUPPRESS)
    if version:
        parser.add_argument("--version", action="version", version=version)
    groups = {g.key: parser.add_argument_group(g.title) for g in GROUPS}
    for opt in OPTIONS:
        kwargs: Dict[str, Any] = {"help": _help_line(opt), "action": opt.action}
        if opt.metavar and opt.action != "store_true":
            kwargs["metavar"] = opt.metavar
        if opt.parse is not None:
            kwargs["type"] = opt.parse
        if opt.nargs is not None:
            kwargs["nargs"] = opt.nargs
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
        if opt.flags[0] == "--cmdline":
            kwargs["const"] = "/proc/cmdline"
        if defaults:
            kwargs["default"] = default_of(opt)
        groups[opt.group].add_argument(*opt.flags, **kwargs)
    return parser


def _help_line(opt: Opt) -> str:
    shown = default_text(opt)
    suffix = "[%s]" if shown.startswith("required") else "[default: %s]"
    return (("%s " + suffix) % (opt.help, shown)).replace("%", "%%")


def exit_code_summary(base: type) -> str:
    """The exit codes, from the error classes themselves (one per code: the most general)."""
    codes: Dict[int, str] = {0: "ok", 2: "usage", 130: "interrupted"}
    pending = list(base.__subclasses__())
    while pending:                      # breadth first: a base class before its children
        cls = pending.pop(0)
        codes.setdefault(cls.exit_code, cls.__name__)
        pending.extend(cls.__subclasses__())
    import textwrap  # lazy: only --help shows the summary
    return textwrap.fill("exit codes (curl's where curl has one; README 'Exit codes'): "
                         + ", ".join("%d %s" % kv for kv in sorted(codes.items())), 79)


def render_markdown() -> str:
    """The README's option table, one small table per group."""
    lines: List[str] = []
    for group in GROUPS:
        rows = [opt for opt in OPTIONS if opt.group == group.key]
        if not rows:
            continue
        lines += ["", "**%s**" % (group.title[0].upper() + group.title[1:]),
                  "", "| option | default | meaning |", "|---|---|---|"]
        lines += ["| `%s` | %s | %s |" % (_md_flags(opt).replace("|", "\\|"),
                                          default_text(opt), opt.help.replace("|", "\\|"))
                  for opt in rows]
    return "\n".join(lines[1:])


def _md_flags(opt: Opt) -> str:
    if opt.positional:
        return opt.metavar + (" ..." if opt.nargs == "*" else "")
    text = "/".join(opt.flags)
    if opt.action == "store_true":
        return text
    return text + (" [%s]" % opt.metavar if opt.nargs == "?" else " %s" % opt.metavar)


def readme_block(readme: str) -> Tuple[int, int]:
    """Where the generated table sits in README text (between the markers)."""
    start = readme.index(README_BEGIN) + len(README_BEGIN)
    return start, readme.index(README_END, start)


def update_readme(path: str) -> bool:
    """Rewrite the table between the markers; True when the file changed."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    start, end = readme_block(text)
    new = text[:start] + "\n" + render_markdown() + "\n" + text[end:]
    if new != text:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(new)
    return new != text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m rawfetch.cliopts",
                                     description="Print or update the README option table.")
    parser.add_argument("--markdown", action="store_true", help="print the table")
    parser.add_argument("--update", metavar="README", help="rewrite the table in README")
    args = parser.parse_args(argv)
    if args.update:
        changed = update_readme(args.update)
        print("%s %s" % (args.update, "updated" if changed else "already up to date"))
    else:
        print(render_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
