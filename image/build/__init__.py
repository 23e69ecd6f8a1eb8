"""``kiln build``: a recipe to a signed A/B disk image, stage by stage (base, slot, ESP, disk)."""
