"""DAISY's Apptainer images on the host: define, build, lock, verify and run them.

One job per module:

- ``paths``: where images are defined and cached, image metadata, definition keys, the host's
  Debian mirror and Apptainer version
- ``lock``: the committed lock ``containers/images.lock.json`` (the published truth), the local lock
  ``<cache>/local-lock.json`` (local builds), and which file a run will use (``planned``)
- ``resolve``: ``resolve`` (the checked image a run uses: cache, bundle, store, else local build),
  ``planned_path``, ``check_signature``, ``ensure``, ``pull``/``push``, ``publish``
- ``stores``: ``dir://`` and ``oras://`` stores, pull and push by digest
- ``signing``: PEM (DSSE) signatures, trusted keys, the signature policy
- ``bundle``: offline bundles (``daisy containers fetch``)
- ``build``: building images whose definition changed, with live progress (local lock)
- ``inspect``: an image's package manifest and (redacted) labels, via spython
- ``execute``: bind specs, ``apptainer exec`` command lines, image holders
- ``cli``: ``daisy containers ...``

The names below are re-exported for callers. Module constants are copies here: to point them
elsewhere (tests), patch ``daisy.images.paths``. Note that ``daisy.images.build`` is the
function; the module is ``importlib.import_module("daisy.images.build")``.
"""
from __future__ import annotations

from .build import build
from .execute import ImageHolders, bind_specs, exec_argv, hold_images
from .bundle import fetch_bundle, pipeline_images
from .lock import (image_path, load_lock, local_entry, locked_path, planned, published_entry, verify, verify_image,
                   write_lock)
from .paths import (APPTAINER, CONTAINERS_DIR, LOCK_PATH, SCHEMAS_DIR, SCHEMAS_TARGET, STEPS_DIR, STEPS_TARGET,
                    ImageDigestMismatch, ImageError, available_images, cache_dir, definition_key, image_meta,
                    local_lock_path)
from .resolve import ResolvedImage, check_signature, ensure, planned_path, publish, pull, push, resolve

__all__ = [
    "ImageError", "ImageDigestMismatch",
    "LOCK_PATH", "CONTAINERS_DIR", "APPTAINER", "STEPS_DIR", "STEPS_TARGET", "SCHEMAS_DIR", "SCHEMAS_TARGET",
    "cache_dir", "available_images", "image_meta", "definition_key",
    "load_lock", "write_lock", "locked_path", "image_path", "verify_image", "verify",
    "local_lock_path", "local_entry", "published_entry", "planned",
    "ResolvedImage", "resolve", "planned_path", "check_signature", "ensure", "pull", "push", "publish",
    "fetch_bundle", "pipeline_images",
    "build", "exec_argv", "bind_specs", "hold_images", "ImageHolders", "register_cli",
]


def __getattr__(name: str):
    # register_cli is imported on first use, so that ``python -m daisy.images.cli`` does not find
    # its module already imported by this package (runpy warns about that).
    if name == "register_cli":
        from .cli import register_cli

        return register_cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
