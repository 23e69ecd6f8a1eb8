"""``kiln freeze``: the ``appliance`` program frozen with PyInstaller for one hardware target."""
