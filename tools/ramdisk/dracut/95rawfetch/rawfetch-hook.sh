#!/bin/sh
# dracut cmdline hook (sourced by dracut's init): with rawfetch.url= on the kernel
# command line, load the drivers, provision (rawfetch-provision powers off at the end).
if getarg rawfetch.url= >/dev/null; then
    modprobe -a virtio_pci virtio_blk virtio_net ${RAWFETCH_DRIVERS} 2>/dev/null
    /usr/lib/rawfetch/busybox sh /usr/lib/rawfetch/rawfetch-provision
fi
