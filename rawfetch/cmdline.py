"""Configuration from the kernel command line, for a PXE-booted ramdisk's init script.

`rawfetch.url=`, `rawfetch.mirror=` (repeatable) and `rawfetch.OPTION[=VALUE]` for any
long option (dashes or underscores) become an argv; every other parameter belongs to
someone else and is ignored. Splitting follows the kernel's own next_arg()
(lib/cmdline.c): whitespace separates parameters, double quotes group, a quote around
a whole parameter or around its value is dropped, and nothing can be escaped. A bare
`--` ends the kernel's parameters (what follows is init's argv), so scanning stops there.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence, Tuple

from .cliopts import OPTIONS, Opt, build_parser, default_of
from .errors import FetchError

PREFIX = "rawfetch."
DEFAULT_FILE = "/proc/cmdline"
MAX_CMDLINE_BYTES = 1 << 20   # far above any arch's COMMAND_LINE_SIZE (x86: 2048, arm64: 4096)
KERNEL_SPACE = " \t\n\v\f\r"  # the kernel's isspace() over ASCII
FLAG_ON = ("1", "y", "yes", "true", "on")   # the kernel's kstrtobool() spellings, and more
FLAG_OFF = ("0", "n", "no", "false", "off")
NOT_FROM_KERNEL = ("cmdline",)  # would recurse; -h/--version are not table options


class KernelCmdlineError(FetchError):
    """A rawfetch.* kernel parameter rawfetch cannot use: a usage error (exit 2)."""
    exit_code = 2
    phase = "usage"


def split_params(text: str) -> List[Tuple[str, Optional[str]]]:
    """All (param, value) pairs up to a bare `--`; value None when there was no '='."""
    params: List[Tuple[str, Optional[str]]] = []
    pos = _skip_space(text, 0)
    while pos < len(text):
        param, value, pos = _next_arg(text, pos)
        if value is None and param == "--":
            break
        params.append((param, value))
    return params


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in KERNEL_SPACE:
        pos += 1
    return pos


def _next_arg(text: str, pos: int) -> Tuple[str, Optional[str], int]:
    """One parameter from pos, exactly as the kernel's next_arg() cuts it."""
    quoted = text[pos] == '"'
    start = pos + 1 if quoted else pos
    in_quote, equals, end = quoted, 0, start
    while end < len(text) and (in_quote or text[end] not in KERNEL_SPACE):
        if equals == 0 and text[end] == "=":
            equals = end - start        # like the kernel, an '=' at index 0 is not seen
        if text[end] == '"':
            in_quote = not in_quote
        end += 1
    stop = end                          # where the kept characters end
    value_start = start + equals + 1
    if equals and text[value_start:end].startswith('"'):
        value_start += 1
        if text[end - 1] == '"':
            stop = end - 1
    if quoted and stop == end and end > start and text[end - 1] == '"':
        stop = end - 1
    param = text[start:start + equals] if equals else text[start:stop]
    value = text[value_start:max(stop, value_start)] if equals else None
    return param, value, _skip_space(text, end + 1 if end < len(text) else end)


def to_argv(text: str) -> List[str]:
    """rawfetch's parameters from a kernel command line, as command-line arguments:
    options first ("--name=value", "--flag"), then "--", the URL and the mirrors."""
    by_name = {opt.long_name: opt for opt in OPTIONS
               if opt.long_name and opt.long_name not in NOT_FROM_KERNEL}
    options: List[str] = []
    url: List[str] = []
    mirrors: List[str] = []
    for param, value in split_params(text):
        if not param.startswith(PREFIX):
            continue
        name = param[len(PREFIX):].replace("_", "-")
        if name in ("url", "mirror"):
            if value is None or not value:
                raise KernelCmdlineError("kernel parameter %s needs a value" % param)
            if name == "url":
                url[:] = [value]        # a later rawfetch.url replaces, as for any param
            else:
                mirrors.append(value)
            continue
        opt = by_name.get(name)
        if opt is None:
            raise KernelCmdlineError("unknown kernel parameter %s (no option --%s)"
                                     % (param, name))
        options += _option_argv(param, opt, value)
    if mirrors and not url:
        raise KernelCmdlineError("kernel parameter %smirror needs %surl" % (PREFIX, PREFIX))
    return options + (["--"] + url + mirrors if url else [])


def _option_argv(param: str, opt: Opt, value: Optional[str]) -> List[str]:
    if opt.action == "store_true":
        word = value.lower() if value is not None else None
        if word is None or word in FLAG_ON:
            return ["--" + opt.long_name]
        if word in FLAG_OFF:
            return []
        raise KernelCmdlineError("kernel parameter %s is a flag: give it alone or =1/=0, "
                                 "not %r" % (param, value))
    if value is None:
        raise KernelCmdlineError("kernel parameter %s needs a value (%s=...)" % (param, param))
    try:                                # name the kernel parameter, not the flag, when bad
        checked = opt.parse(value) if opt.parse is not None else value
    except argparse.ArgumentTypeError as exc:
        raise KernelCmdlineError("kernel parameter %s: %s" % (param, exc)) from None
    if opt.choices is not None and checked not in opt.choices:
        raise KernelCmdlineError("kernel parameter %s: %r is not one of %s"
                                 % (param, value, ", ".join(opt.choices)))
    return ["--%s=%s" % (opt.long_name, value)]


def read_cmdline(path: str) -> str:
    """The file's text; bytes that are not UTF-8 survive as surrogates (os.fsdecode)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CMDLINE_BYTES + 1)
    except OSError as exc:  # not a transfer: an unreadable input is a usage error (2)
        raise KernelCmdlineError("cannot read the kernel command line %s: %s"
                                 % (path, exc.strerror)) from None
    if len(data) > MAX_CMDLINE_BYTES:
        raise KernelCmdlineError("%s is longer than %d bytes: not a kernel command line"
                                 % (path, MAX_CMDLINE_BYTES))
    return os.fsdecode(data)


def merge(argv: Sequence[str], text: str) -> argparse.Namespace:
    """The command line's own options over the kernel's, over the defaults. A slot
    (source = URL and mirrors, output = -o/-O, checksum = the three checksum flags) given
    on the command line replaces the kernel's slot whole, and a repeatable option given
    there replaces all of its kernel values."""
    slot_of = {opt.dest: opt.slot or opt.dest for opt in OPTIONS}
    real = vars(build_parser(defaults=False).parse_args(list(argv)))
    kernel_parser = build_parser(prog="rawfetch (kernel command line)", defaults=False)
    kernel = vars(kernel_parser.parse_args(to_argv(text)))
    taken = {slot_of.get(dest, dest) for dest in real}
    values: Dict[str, object] = {opt.dest: default_of(opt) for opt in OPTIONS}
    values.update((dest, v) for dest, v in kernel.items() if slot_of[dest] not in taken)
    values.update(real)
    return argparse.Namespace(**values)
