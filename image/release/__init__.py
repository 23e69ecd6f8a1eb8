"""``kiln keys``, ``kiln bundle``, ``kiln publish``: release keys, update bundles, TUF channel."""
