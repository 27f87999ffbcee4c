"""Starting from the authors' weights: download, open safely, convert, check.

- :mod:`~oralx_lib.release.download`: ``python -m oralx_lib download --checkpoints --out DIR``
  (the README's "Download Model Checkpoints" Drive folder, resumable; ``--from-archive``).
- :mod:`~oralx_lib.release.loading`: :func:`load_release_checkpoint` opens an MMDetection 2.x
  ``.pth`` with ``torch.load(weights_only=True)`` and an explicit allow-list; never runs code.
- :mod:`~oralx_lib.release.manifest`: the release's state-dict keys and shapes, derived from
  its configuration (``manifest.json``; how: ``README.md`` in this folder).
- :mod:`~oralx_lib.release.convert`: :data:`~oralx_lib.release.convert.KEY_MAP`, the one table
  from release keys to ``build_model("moqam")``, and ``python -m oralx_lib convert-release``.
"""

import importlib

_EXPORTS = {
    "KEY_MAP": "convert",
    "ConversionError": "convert",
    "ConversionReport": "convert",
    "convert_release": "convert",
    "convert_state_dict": "convert",
    "to_release": "convert",
    "ReleaseCheckpoint": "loading",
    "ReleaseCheckpointError": "loading",
    "load_release_checkpoint": "loading",
    "RELEASE_CONFIG": "manifest",
    "load_manifest": "manifest",
    "release_manifest": "manifest",
}


def __getattr__(name: str):
    # imported on first use, so that `python -m oralx_lib.release.manifest` runs cleanly
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
