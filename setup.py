"""The compiled part of chaintwin; everything else is declared in pyproject.toml.

abn._nfqloop is the NFQUEUE hot path (delay line and ABN shim). It needs gcc, the Python
headers, libnetfilter-queue-dev and libmnl-dev; setup.sh installs them and fails naming
the missing one if the build does not work.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "abn._nfqloop",
            sources=["abn/_nfqloop.c"],
            libraries=["netfilter_queue", "mnl"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                                "-Wno-cast-function-type", "-std=gnu11"],
        )
    ],
)
