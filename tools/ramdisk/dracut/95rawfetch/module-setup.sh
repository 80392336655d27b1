#!/bin/bash
# dracut module "rawfetch": provision a disk with rawfetch from the kernel command line.
# Install: copy this directory to /usr/lib/dracut/modules.d/95rawfetch and write the
# payload list once:  python3 tools/ramdisk/build.py --manifest /etc/rawfetch/ramdisk.manifest
# Build:   dracut --add rawfetch [--no-hostonly] initrd.img KVER
# (docs/ramdisk.md). At boot the cmdline hook runs only when rawfetch.url= is given.

RAWFETCH_MANIFEST=${RAWFETCH_MANIFEST:-/etc/rawfetch/ramdisk.manifest}

# called by dracut
check() {
    [[ -r $RAWFETCH_MANIFEST ]] || return 1
    return 255          # only when asked for (--add rawfetch / -m)
}

# called by dracut
depends() {
    return 0            # the network comes up from ip= in rawfetch-provision, not dracut's
}

# called by dracut: the NIC and disk drivers of a virtio guest, plus any listed
installkernel() {
    instmods virtio_pci virtio_blk virtio_net ${RAWFETCH_DRIVERS}
}

# called by dracut
install() {
    local inside host
    while IFS=$'\t' read -r inside host; do
        [[ $inside ]] || continue
        inst_simple "$host" "$inside" || dfatal "rawfetch: cannot install $host"
    done < "$RAWFETCH_MANIFEST"
    printf '127.0.0.1 localhost\n::1 localhost\n' >> "${initdir}/etc/hosts"
    inst_hook cmdline 99 "$moddir/rawfetch-hook.sh"
}
