"""segnode: a DICOM-native node that segments brain tumours (research use, not for clinical use).

One import namespace for the product's folders. The folders the design card fixes stay at the
repository root (``node/``, ``pipeline/``, ``storage/``, ``config/``); this package links them as
``segnode.node``, ``segnode.pipeline``, ``segnode.storage`` and ``segnode.config``, so a wheel
installs one top-level name (``segnode``) and no generic ones that would collide with other
distributions. Import the stages by their full name (``segnode.node.receiving.scp``); the bare
names (``node.scp``) are refused by the code-quality step.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    try:
        return version("segnode")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


#: The product version written into every result's provenance (SoftwareVersions, the SR).
__version__ = _installed_version()
