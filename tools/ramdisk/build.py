"""Build the rawfetch bootstrap ramdisk from this checkout, and measure it by part.

    python3 tools/ramdisk/build.py --out DIR [--no-libcrypto] [--python PATH]

writes DIR/initrd.img (gzip'd newc cpio), DIR/vmlinuz (Debian's kernel, fetched and
unpacked under /var/cache/rawfetch-vm, never installed) and prints the footprint table.
Contents: busybox (static), /init, a CPython interpreter with exactly the shared libraries
(ldd) and stdlib modules rawfetch imports (traced: tools/ramdisk/trace.py), rawfetch
itself, and the virtio modules Debian builds as modules. Paths inside equal the host's,
so the interpreter finds its stdlib and the loader its libraries without configuration.
--no-libcrypto leaves out _ssl and _hashlib (and so libssl/libcrypto): http only, and
hashlib falls back to CPython's built-in _sha256.
"""
from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kernel as kernel_mod  # noqa: E402  (sibling module; this file runs as a script)
import trace as trace_mod  # noqa: E402

CHECKOUT = trace_mod.CHECKOUT
BUSYBOX = "/bin/busybox"
DEFAULT_PYTHON = "/usr/bin/python3"      # Debian's: most extension modules built in
LIBCRYPTO_MODULES = ("_ssl", "_hashlib", "ssl")   # what --no-libcrypto leaves out
RAWFETCH_DIR = "/usr/lib/rawfetch"        # PYTHONPATH in /init
GZIP_LEVEL = 9
LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")
FIND_SPECS = r"""
import importlib.util, sys
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    origin = getattr(spec, "origin", None) or "-"
    print(name, origin)
"""
HASH_SPEED = r"""
import hashlib, time, _sha256
data = bytes(64 << 20)
for label, make in (("OpenSSL (_hashlib)", hashlib.sha256), ("built-in _sha256", _sha256.sha256)):
    best = min(_timed(make, data) for _ in range(3))
    print("| %s | %.0f |" % (label, len(data) / best / 1e6))
""".replace("_timed(make, data)", "(lambda t0: (make(data).digest(), time.perf_counter() - t0)[1])"
            "(time.perf_counter())")
STDLIB_DIR = "import sysconfig; print(sysconfig.get_paths()['stdlib'])"


class Image:
    """The ramdisk's entries: path inside -> (host source or None, mode, part)."""

    def __init__(self) -> None:
        self.files: Dict[str, Tuple[Optional[str], int, str]] = {}
        self.symlinks: Dict[str, str] = {}
        self.data: Dict[str, bytes] = {}

    def add(self, inside: str, source: str, part: str, mode: int = 0) -> None:
        real = os.path.realpath(source)
        self.files[inside] = (real, mode or stat.S_IMODE(os.stat(real).st_mode), part)

    def add_data(self, inside: str, data: bytes, mode: int, part: str) -> None:
        self.data[inside] = data
        self.files[inside] = (None, mode, part)

    def sizes(self) -> Dict[str, int]:
        parts: Dict[str, int] = {}
        for inside, (source, _mode, part) in self.files.items():
            size = len(self.data[inside]) if source is None else os.path.getsize(source)
            parts[part] = parts.get(part, 0) + size
        return parts


def run_python(python: str, code: str, *args: str) -> str:
    proc = subprocess.run([python, "-S", "-c", code, *args], stdout=subprocess.PIPE,
                          check=True, env=trace_mod.guest_env(""))
    return proc.stdout.decode()


def stdlib_files(python: str, names: Iterable[str]) -> List[str]:
    """Host paths of the traced modules (built-in and frozen ones have none), plus the
    os.py landmark the interpreter looks for to find its prefix."""
    stdlib = run_python(python, STDLIB_DIR).strip()
    found = [os.path.join(stdlib, "os.py")]
    for line in run_python(python, FIND_SPECS, *sorted(names)).splitlines():
        name, origin = line.split(" ", 1)
        if origin.startswith("/"):
            found.append(origin)
        elif origin == "-":
            # not found: an optional import that failed while tracing (copy's Jython
            # fallback `org.python.core`, pulled in by dataclasses) or a namespace
            # package; neither has a file to ship. A module rawfetch needs and the guest
            # lacks fails the vm tier's downloads, not silently.
            continue
        elif origin not in ("built-in", "frozen"):
            raise RuntimeError("traced module %s has no file (%s) under %s"
                               % (name, origin, python))
    return sorted(set(found))


def shared_libs(binaries: Sequence[str]) -> List[str]:
    """Every library ldd names for the binaries, the loader included."""
    libs: Set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, check=False).stdout
        for line in out.decode().splitlines():
            match = LDD_LINE.match(line)
            if match:
                libs.add(match.group(1))
    return sorted(libs)


def userspace(python: str, no_libcrypto: bool) -> Image:
    """What any rawfetch ramdisk carries, whoever builds it (this recipe, or the dracut
    and initramfs-tools hooks through --manifest): the interpreter, its libraries, the
    traced stdlib, rawfetch, the provisioning script and busybox."""
    image = Image()
    image.add(RAWFETCH_DIR + "/busybox", BUSYBOX, "busybox + scripts")
    for script in ("rawfetch-provision", "udhcpc.script"):
        image.add(RAWFETCH_DIR + "/" + script, os.path.join(HERE, script),
                  "busybox + scripts", 0o755)
    interpreter = os.path.realpath(python)
    image.add(interpreter, interpreter, "interpreter")
    if interpreter != "/usr/bin/python3":
        image.symlinks["/usr/bin/python3"] = interpreter
    names = trace_mod.trace(python)
    if no_libcrypto:
        names -= set(LIBCRYPTO_MODULES)
    modules = stdlib_files(python, names)
    for path in modules:
        image.add(path, path, "stdlib (extensions)" if path.endswith(".so") else "stdlib (.py)")
    for lib in shared_libs([interpreter] + [m for m in modules if m.endswith(".so")]):
        image.add(lib, lib, "shared libraries")
    for root, _dirs, files in os.walk(os.path.join(CHECKOUT, "rawfetch")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                image.add(RAWFETCH_DIR + path[len(CHECKOUT):], path, "rawfetch")
    return image


def collect(python: str, no_libcrypto: bool, kernel: "kernel_mod.Kernel") -> Image:
    """The recipe's own ramdisk: userspace() plus /init, busybox and the kernel modules."""
    image = userspace(python, no_libcrypto)
    image.files[BUSYBOX] = image.files.pop(RAWFETCH_DIR + "/busybox")
    image.symlinks[RAWFETCH_DIR + "/busybox"] = BUSYBOX
    image.add("/init", os.path.join(HERE, "init"), "busybox + scripts", 0o755)
    image.add_data("/etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644,
                   "busybox + scripts")
    order = []
    for ko in kernel_mod.load_order(kernel):
        inside = "/lib/modules/%s/%s" % (kernel.release, ko[len(kernel.modules_dir) + 1:])
        image.add(inside, ko, "kernel modules")
        order.append(inside)
    image.add_data("/etc/rawfetch-init/modules", ("\n".join(order) + "\n").encode(), 0o644,
                   "kernel modules")
    return image


def write_manifest(image: Image, path: str) -> None:
    """INSIDE<TAB>HOST lines for the hooks (symlinks become copies of their target)."""
    lines = ["%s\t%s" % (inside, source) for inside, (source, _m, _p) in image.files.items()
             if source is not None]
    lines += ["%s\t%s" % (inside, target) for inside, target in image.symlinks.items()]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("\n".join(sorted(lines)) + "\n")


def _newc(name: str, mode: int, data: bytes, ino: int, rdev: Tuple[int, int] = (0, 0)
          ) -> bytes:
    """One entry of a newc cpio archive (the initramfs format), owned by root, mtime 0."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def write_cpio(image: Image, path: str) -> int:
    """The gzip'd archive; directories are created for every parent. Returns raw size."""
    entries: List[bytes] = []
    dirs = {"dev", "proc", "sys", "tmp", "run", "root", "etc"}
    for inside in list(image.files) + list(image.symlinks):
        parts = inside.strip("/").split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    ino = 1
    for directory in sorted(dirs):
        entries.append(_newc(directory, stat.S_IFDIR | 0o755, b"", ino))
        ino += 1
    entries.append(_newc("dev/console", stat.S_IFCHR | 0o600, b"", ino, rdev=(5, 1)))
    for inside, (source, mode, _part) in sorted(image.files.items()):
        ino += 1
        if source is None:
            data = image.data[inside]
        else:
            with open(source, "rb") as handle:
                data = handle.read()
        entries.append(_newc(inside.lstrip("/"), stat.S_IFREG | mode, data, ino))
    for inside, target in sorted(image.symlinks.items()):
        ino += 1
        entries.append(_newc(inside.lstrip("/"), stat.S_IFLNK | 0o777, target.encode(), ino))
    entries.append(_newc("TRAILER!!!", 0, b"", 0))
    raw = b"".join(entries)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(raw, GZIP_LEVEL, mtime=0))
    return len(raw)


def footprint(image: Image, raw: int, compressed: int) -> str:
    """The markdown table by part: bytes unpacked in the ramdisk's tmpfs."""
    rows = ["| part | files | MiB |", "|---|---:|---:|"]
    counts: Dict[str, int] = {}
    for _source, _mode, part in image.files.values():
        counts[part] = counts.get(part, 0) + 1
    for part, size in sorted(image.sizes().items(), key=lambda kv: -kv[1]):
        rows.append("| %s | %d | %.2f |" % (part, counts[part], size / 2 ** 20))
    rows.append("| **unpacked total** (cpio) | %d | %.2f |" % (len(image.files), raw / 2 ** 20))
    rows.append("| **initrd.img** (gzip -%d) | | %.2f |" % (GZIP_LEVEL, compressed / 2 ** 20))
    return "\n".join(rows)


def _default_python() -> str:
    return DEFAULT_PYTHON if os.path.exists(DEFAULT_PYTHON) else sys.executable


def build(out: str, python: str = "", no_libcrypto: bool = False,
          cache_dir: str = kernel_mod.CACHE_DIR) -> Tuple[str, str, str]:
    """(initrd path, vmlinuz path, footprint table) of a fresh build into `out`."""
    python = python or _default_python()
    kernel = kernel_mod.fetch(cache_dir)
    image = collect(python, no_libcrypto, kernel)
    os.makedirs(out, exist_ok=True)
    initrd = os.path.join(out, "initrd.img")
    raw = write_cpio(image, initrd)
    vmlinuz = os.path.join(out, "vmlinuz")
    shutil.copyfile(kernel.vmlinuz, vmlinuz)
    table = footprint(image, raw, os.path.getsize(initrd))
    with open(os.path.join(out, "footprint.md"), "w") as handle:
        handle.write(table + "\n")
    return initrd, vmlinuz, table


def hash_speed(python: str) -> str:
    """sha256 throughput of the shipped interpreter with and without OpenSSL: what
    --no-libcrypto costs (rawfetch hashes every byte it writes, and again with
    --verify-written)."""
    return "| sha256 via | MB/s |\n|---|---:|\n" + run_python(python, HASH_SPEED).strip()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="directory for initrd.img and vmlinuz")
    parser.add_argument("--python", default="", help="interpreter to ship (default: %s, "
                        "else this one)" % DEFAULT_PYTHON)
    parser.add_argument("--no-libcrypto", action="store_true",
                        help="leave out _ssl/_hashlib and OpenSSL: http only, built-in sha256")
    parser.add_argument("--cache-dir", default=kernel_mod.CACHE_DIR,
                        help="where Debian's kernel package is unpacked (keyed by version)")
    parser.add_argument("--manifest", default="", metavar="FILE",
                        help="only write the userspace file list (INSIDE<TAB>HOST) the "
                        "dracut and initramfs-tools hooks install, build nothing")
    parser.add_argument("--hash-speed", action="store_true",
                        help="only measure sha256 with and without OpenSSL, build nothing")
    args = parser.parse_args(argv)
    if args.hash_speed:
        print(hash_speed(args.python or _default_python()))
        return
    if args.manifest:
        write_manifest(userspace(args.python or _default_python(), args.no_libcrypto),
                       args.manifest)
        return
    if not args.out:
        parser.error("--out DIR is required (unless --hash-speed or --manifest)")
    initrd, vmlinuz, table = build(args.out, args.python, args.no_libcrypto, args.cache_dir)
    print("%s\n%s\n\n%s" % (initrd, vmlinuz, table))


if __name__ == "__main__":
    main()
