"""Build a rawfetch ramdisk with dracut and this checkout's 95rawfetch module.

    python3 tools/ramdisk/with_dracut.py --out DIR

What an operator does is install dracut/95rawfetch into /usr/lib/dracut/modules.d and
run `dracut --add rawfetch`; this does the same without touching the host: dracut's
module tree is copied to a temp dir (dracutbasedir) with 95rawfetch added, the payload
list comes from build.py --manifest, and the kernel is the cached Debian package
(dracut --kmoddir; depmod runs on the unpacked tree first, as the package's postinst
would). Needs dracut-core (apt-get install dracut-core). Writes DIR/initrd-dracut.img
and DIR/vmlinuz.
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
DRACUT_TIMEOUT = 600.0        # s; dracut resolves every binary's libraries with ldd
# base: dracut's own init and hooks; rawfetch: ours. systemd is left out even when the
# host has it: a provisioning ramdisk needs no service manager (and boots faster).
MODULES = "base rawfetch"


def missing() -> Optional[str]:
    for tool in ("dracut", "depmod"):
        if shutil.which(tool) is None:
            return "%s not found (apt-get install dracut-core)" % tool
    if not os.path.isdir(DRACUT_BASE):
        return "%s missing (apt-get install dracut-core)" % DRACUT_BASE
    return None


def build(out: str, python: str = "", cache_dir: str = kernel_mod.CACHE_DIR) -> Tuple[str, str]:
    """(initrd, vmlinuz) built by dracut into `out`."""
    kernel = kernel_mod.fetch(cache_dir)
    subprocess.run(["depmod", "-b", kernel.root, kernel.release], check=True)
    os.makedirs(out, exist_ok=True)
    initrd = os.path.join(out, "initrd-dracut.img")
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "dracut")
        shutil.copytree(DRACUT_BASE, base, symlinks=True)
        shutil.copytree(os.path.join(HERE, "dracut", "95rawfetch"),
                        os.path.join(base, "modules.d", "95rawfetch"))
        manifest = os.path.join(tmp, "ramdisk.manifest")
        build_mod.write_manifest(build_mod.userspace(python or build_mod._default_python(),
                                                     False), manifest)
        os.makedirs(os.path.join(tmp, "conf.d"))
        env = dict(os.environ, dracutbasedir=base, RAWFETCH_MANIFEST=manifest)
        proc = subprocess.run(
            ["dracut", "--force", "--no-hostonly", "--no-early-microcode",
             "--kver", kernel.release, "--kmoddir", kernel.modules_dir, "-m", MODULES,
             "--omit", "systemd", "--conf", "/dev/null", "--confdir",
             os.path.join(tmp, "conf.d"), "--tmpdir", tmp, "--compress", "gzip", initrd],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=DRACUT_TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError("dracut failed:\n" + proc.stdout.decode(errors="replace")[-3000:])
    vmlinuz = os.path.join(out, "vmlinuz")
    shutil.copyfile(kernel.vmlinuz, vmlinuz)
    return initrd, vmlinuz


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--python", default="")
    parser.add_argument("--cache-dir", default=kernel_mod.CACHE_DIR)
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        parser.error(reason)
    initrd, vmlinuz = build(args.out, args.python, args.cache_dir)
    print("%s (%.2f MiB)\n%s" % (initrd, os.path.getsize(initrd) / 2 ** 20, vmlinuz))


if __name__ == "__main__":
    main()
