"""The device's LAN API: an authenticated HTTPS API for a technician's laptop on the site LAN.

Standard library only (``http.server.ThreadingHTTPServer`` + ``ssl``) plus ``cryptography`` for
the device certificate: see README.md in this directory for the protocol, the endpoints, the
pairing exchange and the threat model.
"""
