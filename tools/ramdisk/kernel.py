"""Debian's kernel for the ramdisk, fetched as a package and unpacked, never installed.

Why Debian's stock kernel: it is what an operator's bootstrap ramdisk boots, so the
modules it needs (virtio as modules, not built in) are the real problem, not a custom
kernel's. The package is fetched with `apt-get download` and unpacked with `dpkg-deb -x`
into a cache keyed by package name and version, so the host's /boot and /lib/modules
stay untouched and a second build costs nothing.
"""
from __future__ import annotations

import glob
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

META_PACKAGE = "linux-image-amd64"
CACHE_DIR = "/var/cache/rawfetch-vm"    # survives between CI steps; keyed by version below
APT_TIMEOUT = 600.0                     # s; a 70 MiB download from a slow mirror
# What the guest needs: the virtio PCI transport, its disk and its NIC (all =m in
# Debian's config; their dependencies are found from each module's own .modinfo).
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net")
DONE_MARK = ".unpacked"


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel package: its image, modules tree and release string."""
    root: str
    release: str

    @property
    def vmlinuz(self) -> str:
        return os.path.join(self.root, "boot", "vmlinuz-" + self.release)

    @property
    def modules_dir(self) -> str:
        return os.path.join(self.root, "lib", "modules", self.release)

    def config(self) -> Dict[str, str]:
        """CONFIG_X -> y/m/value from the package's /boot/config."""
        values = {}
        with open(os.path.join(self.root, "boot", "config-" + self.release)) as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep and key.startswith("CONFIG_"):
                    values[key] = value
        return values


def _apt(args: Sequence[str], cwd: Optional[str] = None) -> str:
    proc = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=cwd, timeout=APT_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(args), proc.stderr.decode().strip()))
    return proc.stdout.decode()


def current_package() -> str:
    """The versioned image package the meta package points at (linux-image-6.1.0-N-amd64)."""
    for line in _apt(["apt-cache", "depends", META_PACKAGE]).splitlines():
        word = line.strip()
        if word.startswith("Depends: linux-image-"):
            return word.split()[1]
    raise RuntimeError("apt-cache depends %s names no linux-image package" % META_PACKAGE)


def package_version(package: str) -> str:
    for line in _apt(["apt-cache", "show", "--no-all-versions", package]).splitlines():
        if line.startswith("Version: "):
            return line.split()[1]
    raise RuntimeError("apt-cache show %s gives no Version" % package)


def fetch(cache_dir: str = CACHE_DIR, package: str = "") -> Kernel:
    """The unpacked kernel package, downloading it only when not cached yet."""
    package = package or current_package()
    version = package_version(package)
    root = os.path.join(cache_dir, "%s_%s" % (package, version.replace(":", "%")))
    if not os.path.exists(os.path.join(root, DONE_MARK)):
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            _apt(["apt-get", "download", "%s=%s" % (package, version)], cwd=tmp)
            debs = glob.glob(os.path.join(tmp, "*.deb"))
            unpacked = os.path.join(tmp, "root")
            _apt(["dpkg-deb", "-x", debs[0], unpacked])
            open(os.path.join(unpacked, DONE_MARK), "w").close()
            shutil.rmtree(root, ignore_errors=True)
            os.rename(unpacked, root)
    releases = os.listdir(os.path.join(root, "lib", "modules"))
    return Kernel(root, releases[0])


def modinfo(path: str) -> Dict[str, str]:
    """The key=value pairs of an (uncompressed) module's .modinfo ELF section."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise RuntimeError("%s is not a 64-bit ELF module (compressed?)" % path)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    names_off = sections[shstrndx][4]
    for name_off, _type, _flags, _addr, offset, size in sections:
        name = data[names_off + name_off:data.index(b"\0", names_off + name_off)]
        if name == b".modinfo":
            pairs = data[offset:offset + size].split(b"\0")
            return dict(p.decode().partition("=")[::2] for p in pairs if b"=" in p)
    return {}


def module_paths(kernel: Kernel) -> Dict[str, str]:
    """Module name (dashes as underscores) -> path of its .ko in the package."""
    found = {}
    for path in glob.glob(os.path.join(kernel.modules_dir, "kernel", "**", "*.ko"),
                          recursive=True):
        found[os.path.basename(path)[:-3].replace("-", "_")] = path
    return found


def load_order(kernel: Kernel, wanted: Sequence[str] = GUEST_MODULES) -> List[str]:
    """The .ko paths to insmod, dependencies first; built-in ones are skipped."""
    paths = module_paths(kernel)
    config = kernel.config()
    order: List[str] = []

    def visit(name: str) -> None:
        path = paths.get(name)
        if path is None:
            if config.get("CONFIG_" + name.upper()) == "y":
                return                      # built into this kernel
            raise RuntimeError("module %s is neither in %s nor built in"
                               % (name, kernel.modules_dir))
        if path in order:
            return
        for dep in filter(None, modinfo(path).get("depends", "").split(",")):
            visit(dep.replace("-", "_"))
        order.append(path)

    for name in wanted:
        visit(name)
    return order
