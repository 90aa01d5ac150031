"""What the running code was built from: the version, the source revision and Python.

``revision`` is the git commit the package was built from. It is written into
``exporter/_build.py`` when a wheel is built (``setup.py``): from the environment variable
``SHOPLAZZA_EXPORTER_REVISION`` when set (the Dockerfile's ``REVISION`` build argument,
for build contexts without ``.git``), else from ``git rev-parse HEAD`` when the source is a
git checkout, else empty. A source tree used in place (``pip install -e``) has no
``_build.py``: empty too (docs/packaging.md).
"""

from __future__ import annotations

import platform

from exporter import __version__

try:
    from exporter._build import REVISION  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    REVISION = ""

__all__ = ["PYTHON_VERSION", "REVISION", "build_labels"]

PYTHON_VERSION = platform.python_version()


def build_labels(version: str = __version__) -> dict[str, str]:
    """The labels of ``shoplazza_exporter_build_info``."""
    return {"version": version, "revision": str(REVISION), "python_version": PYTHON_VERSION}
