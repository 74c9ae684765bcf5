"""Build the Cython extensions of meshfast_core.

Each compiled module has a pure-Python twin of the same behaviour:

* ``meshfast_core/_sse.pyx``      twin ``sse_py.py``     selector ``sse.py``
* ``meshfast_core/_http_c.py``    twin ``http_py.py``    selector ``http.py``
  (``_http_c.py`` is a symlink to ``http_py.py``: one source compiled by Cython in
  pure-Python mode, typed by ``_http_c.pxd``, so the two cannot drift)
* ``meshfast_core/_tokens.pyx``   twin ``tokens_py.py``  selector ``tokens.py``
* ``meshfast_core/_limits.pyx``   twin ``limits_py.py``  selector ``limits.py``
  (``_limits.pxd`` declares its classes' C fields, which ``_records`` cimports)
* ``meshfast_core/_usd.pyx``      twin ``usd_py.py``     selector ``usd.py``
* ``meshfast_core/_pricing.pyx``  twin ``pricing_py.py`` selector ``pricing.py``
* ``meshfast_core/_records.pyx``  twin ``records_py.py`` selector ``records.py``
* ``meshfast_core/_keys.pyx``     twin ``keys_py.py``    selector ``keys.py``
  (links OpenSSL's libcrypto; built only when its headers, Debian's libssl-dev, are
  installed, else the twin serves)
* ``meshfast_core/_sqlite_writer.pyx``  twin: ``apply``/``commit`` in
  ``meshfast/store/sqlite_writer.py``, which picks it (the embedded store's writer
  process; links SQLite's libsqlite3, built only when its header, Debian's
  libsqlite3-dev, is installed, else the twin serves)

``MESHFAST_DEBUG_BUILD=1`` builds with line tracing and writes annotated HTML.
"""

import os
import sys
import sysconfig

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - build requirement
    raise SystemExit("Cython>=3 is required to build meshfast_core") from exc

DEBUG = os.environ.get("MESHFAST_DEBUG_BUILD") == "1"

MODULES = {
    "meshfast_core._sse": "meshfast_core/_sse.pyx",
    "meshfast_core._http_c": "meshfast_core/_http_c.py",
    "meshfast_core._tokens": "meshfast_core/_tokens.pyx",
    "meshfast_core._limits": "meshfast_core/_limits.pyx",
    "meshfast_core._usd": "meshfast_core/_usd.pyx",
    "meshfast_core._pricing": "meshfast_core/_pricing.pyx",
    "meshfast_core._records": "meshfast_core/_records.pyx",
    "meshfast_core._keys": "meshfast_core/_keys.pyx",
    "meshfast_core._sqlite_writer": "meshfast_core/_sqlite_writer.pyx",
}


def _has_header(name: str) -> bool:
    dirs = [sysconfig.get_paths()["include"], "/usr/include", "/usr/local/include"]
    dirs += [f"/usr/include/{sysconfig.get_config_var('MULTIARCH') or ''}"]
    return any(os.path.exists(os.path.join(d, name)) for d in dirs)


# compiled modules that need a system library's headers: built only where they are found
# (the Python twin serves otherwise)
OPTIONAL = (
    ("meshfast_core._keys", "openssl/sha.h", "OpenSSL's headers", "libssl-dev", "key digests use its Python twin"),
    ("meshfast_core._sqlite_writer", "sqlite3.h", "SQLite's header", "libsqlite3-dev",
     "the store's writer process uses its Python twin"),
)  # fmt: skip
for module, header, what, package, instead in OPTIONAL:
    if not _has_header(header):
        MODULES.pop(module)
        print(
            f"meshfast: {header} ({what}; Debian: apt-get install {package}) was not found,"
            f" so {module} is not built; {instead}",
            file=sys.stderr,
        )

extensions = [
    Extension(
        name,
        [src],
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if DEBUG else [],
        extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
    )
    for name, src in MODULES.items()
    if os.path.exists(src)
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=DEBUG,
        compiler_directives={
            "linetrace": DEBUG,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
