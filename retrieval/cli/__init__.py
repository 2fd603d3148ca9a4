"""The app layer: the ``ckn`` command line, one module per command, and provenance.

Imports both ``ckn`` (public API only) and ``retrieval``; neither imports it.
"""
