"""OTA: install a bundle into the inactive slot, delta apply, download/resume (see README.md)."""
