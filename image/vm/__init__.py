"""``kiln vm``: boot a device image in QEMU (serial log, port forwards, power cuts)."""
