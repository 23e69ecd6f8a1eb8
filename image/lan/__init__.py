"""The technician's laptop on the site LAN: discover, pair, status, push, diag (no internet).

See ``appliance/api/README.md`` for the device side and the protocol.
"""
