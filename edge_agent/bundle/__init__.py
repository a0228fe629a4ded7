"""Model bundles: the signed contract between the desk (``export``) and the gateway.

A bundle is a directory holding ``manifest.json``, its Ed25519 signature ``manifest.sig`` and
the files the manifest lists with their SHA-256. See ``docs/bundle-format.md``.
"""
