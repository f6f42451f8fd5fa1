"""Builds the Cython core (ext/core.pyx) into dataplane._core.

The extension is one translation unit: ext/core.pyx includes one .pxi per
concern and the thin C headers under ext/includes/.
"""
from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

core = Extension(
    "dataplane._core",
    sources=["ext/core.pyx"],
    include_dirs=["ext/includes"],
    depends=glob("ext/*.pxi") + glob("ext/includes/*"),  # rebuild when a header changes
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-unused-function", "-Wno-sign-compare"],
    define_macros=[("_GNU_SOURCE", "1")],
    libraries=["crypto"],  # OpenSSL's libcrypto: AES-256-GCM and ChaCha20-Poly1305 per datagram
)

setup(
    ext_modules=cythonize(
        [core],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False,
                             "cdivision": True, "embedsignature": True},
    ),
)
