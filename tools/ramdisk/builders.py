"""Build a rawfetch ramdisk with the distributions' own builders and this checkout's hooks.

    python3 tools/ramdisk/builders.py --builder dracut|initramfs-tools --out DIR

What an operator does is install the hook (dracut/95rawfetch into
/usr/lib/dracut/modules.d, or initramfs-tools/ into /etc/initramfs-tools), write the
payload list with build.py --manifest, and run `dracut --add rawfetch` or
`update-initramfs -u`. This does the same without touching the host, against the cached
Debian kernel package (never installed; depmod runs on the unpacked tree first, as the
package's postinst would):
* dracut: its module tree is copied to a temp dir (dracutbasedir) with 95rawfetch added;
  the kernel comes in with --kmoddir.
* initramfs-tools: the hooks come from a temp config dir (mkinitramfs -d); mkinitramfs
  reads modules only from /lib/modules/VERSION and the config from /boot/config-VERSION,
  so it runs in a private mount namespace (unshare -m) where an overlay on /usr/lib and
  a tmpfs on /boot hold the cached kernel's: the host's own trees never change.
Needs dracut-core or initramfs-tools-core. Writes DIR/initrd-BUILDER.img and DIR/vmlinuz.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import build as build_mod  # noqa: E402  (sibling module; this file runs as a script)
import kernel as kernel_mod  # noqa: E402

DRACUT_BASE = "/usr/lib/dracut"
ITOOLS_BASE = "/usr/share/initramfs-tools"
BUILDERS = ("dracut", "initramfs-tools")
# initramfs-tools' config for a provisioning ramdisk: only the modules the hook adds,
# busybox for the shell, gzip (Debian's kernel has RD_GZIP; zstd needs the zstd tool).
ITOOLS_CONF = ("MODULES=list\nBUSYBOX=y\nCOMPRESS=gzip\nDEVICE=\nNFSROOT=auto\n"
               "RUNSIZE=10%\nFSTYPE=auto\n")
ITOOLS_SCRIPT = """set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=/usr/lib,upperdir=$TMP/up,workdir=$TMP/work /usr/lib
mkdir -p /usr/lib/modules/$KVER
mount --bind "$KMODDIR" /usr/lib/modules/$KVER
mount -t tmpfs tmpfs /boot
cp "$KCONFIG" /boot/
mkinitramfs -d "$TMP/conf" -o "$OUT" "$KVER"
"""
BUILD_TIMEOUT = 600.0         # s; the builders resolve every binary's libraries with ldd
# base: dracut's own init and hooks; rawfetch: ours. systemd is left out even when the
# host has it: a provisioning ramdisk needs no service manager (and boots faster).
MODULES = "base rawfetch"


def missing(builder: str) -> Optional[str]:
    package = "dracut-core" if builder == "dracut" else "initramfs-tools-core"
    tools = ("dracut", "depmod") if builder == "dracut" else ("mkinitramfs", "depmod",
                                                              "unshare")
    for tool in tools:
        if shutil.which(tool) is None:
            return "%s not found (apt-get install %s)" % (tool, package)
    return None


def build(builder: str, out: str, python: str = "", cache_dir: str = kernel_mod.CACHE_DIR
          ) -> Tuple[str, str]:
    """(initrd, vmlinuz) built by `builder` into `out`."""
    kernel = kernel_mod.fetch(cache_dir)
    subprocess.run(["depmod", "-b", kernel.root, kernel.release], check=True)
    os.makedirs(out, exist_ok=True)
    initrd = os.path.join(out, "initrd-%s.img" % builder)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = os.path.join(tmp, "ramdisk.manifest")
        build_mod.write_manifest(build_mod.userspace(python or build_mod._default_python(),
                                                     False), manifest)
        run = _dracut if builder == "dracut" else _initramfs_tools
        proc = run(kernel, tmp, manifest, initrd)
        if proc.returncode != 0 or not os.path.getsize(initrd):
            raise RuntimeError("%s failed:\n%s" % (builder, proc.stdout.decode(
                errors="replace")[-3000:]))
    vmlinuz = os.path.join(out, "vmlinuz")
    shutil.copyfile(kernel.vmlinuz, vmlinuz)
    return initrd, vmlinuz


def _initramfs_tools(kernel: "kernel_mod.Kernel", tmp: str, manifest: str, initrd: str
                     ) -> "subprocess.CompletedProcess[bytes]":
    conf = os.path.join(tmp, "conf")
    shutil.copytree(os.path.join(HERE, "initramfs-tools"), conf)
    for path in (os.path.join(conf, "conf.d"), os.path.join(tmp, "up"),
                 os.path.join(tmp, "work")):
        os.makedirs(path)
    with open(os.path.join(conf, "initramfs.conf"), "w") as handle:
        handle.write(ITOOLS_CONF)
    open(os.path.join(conf, "modules"), "w").close()
    env = dict(os.environ, RAWFETCH_MANIFEST=manifest, TMP=tmp, KVER=kernel.release,
               KMODDIR=kernel.modules_dir, OUT=initrd,
               KCONFIG=os.path.join(kernel.root, "boot", "config-" + kernel.release))
    return subprocess.run(["unshare", "-m", "sh", "-c", ITOOLS_SCRIPT], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT)


def _dracut(kernel: "kernel_mod.Kernel", tmp: str, manifest: str, initrd: str
            ) -> "subprocess.CompletedProcess[bytes]":
    base = os.path.join(tmp, "dracut")
    shutil.copytree(DRACUT_BASE, base, symlinks=True)
    shutil.copytree(os.path.join(HERE, "dracut", "95rawfetch"),
                    os.path.join(base, "modules.d", "95rawfetch"))
    os.makedirs(os.path.join(tmp, "conf.d"))
    env = dict(os.environ, dracutbasedir=base, RAWFETCH_MANIFEST=manifest)
    return subprocess.run(
        ["dracut", "--force", "--no-hostonly", "--no-early-microcode",
         "--kver", kernel.release, "--kmoddir", kernel.modules_dir, "-m", MODULES,
         "--omit", "systemd", "--conf", "/dev/null", "--confdir",
         os.path.join(tmp, "conf.d"), "--tmpdir", tmp, "--compress", "gzip", initrd],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builder", choices=BUILDERS, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--python", default="")
    parser.add_argument("--cache-dir", default=kernel_mod.CACHE_DIR)
    args = parser.parse_args(argv)
    reason = missing(args.builder)
    if reason:
        parser.error(reason)
    initrd, vmlinuz = build(args.builder, args.out, args.python, args.cache_dir)
    print("%s (%.2f MiB)\n%s" % (initrd, os.path.getsize(initrd) / 2 ** 20, vmlinuz))


if __name__ == "__main__":
    main()
