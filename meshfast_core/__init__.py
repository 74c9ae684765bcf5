"""meshfast_core: the compiled hot path of meshfast.

Every module here is a Cython extension with a pure-Python twin of identical
behaviour and names. The public module (``sse``, ``http``) is a selector that
imports the compiled version unless ``MESHFAST_NO_EXTENSIONS`` is set or the
extension did not build; each selector exposes ``COMPILED`` so tests can tell.
"""
