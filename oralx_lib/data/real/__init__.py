"""Getting the real OralXrays-9 onto disk: download, extract, arrange, verify, split.

One module per step: :mod:`~oralx_lib.data.real.download` (Google Drive, and the whole path),
:mod:`~oralx_lib.data.real.archives`, :mod:`~oralx_lib.data.real.layout`,
:mod:`~oralx_lib.data.real.verify`, :mod:`~oralx_lib.data.real.split`.

The release is a Google Drive folder of password-protected zip files. The whole path is::

    Drive folder --download_folder--> <out>/_download/*.zip
                 --extract_archive--> <out>/_extracted/<archive>/...
                 --normalise_layout-> <out>/annotations/instances_{split}2017.json
                                      <out>/{split}2017/<file_name>
                 --verify_dataset---> VerifyReport (counts, problems)

:func:`prepare_oralxrays9` runs it and records each finished step in ``<out>/.oralx_prepare.json``,
so an interrupted run picks up where it stopped. When Drive refuses (quota, permissions, no
network), copy the folder to your own Google Drive (or download it by hand) and pass the folder or
a zip as ``from_archive``.

Only ``train`` and ``val`` may ship; :func:`split_dataset` carves a deterministic test split out
of ``val``. Everything here runs on a CPU; ``gdown`` and ``pyzipper`` are imported only when
needed (``pip install "oralx-lib[download]"``).
"""

from ...errors import DownloadError
from .archives import ExtractResult, extract_archive
from .common import ARCHIVE_PASSWORD, DRIVE_FOLDER_URL, PAPER_COUNTS, PART_SUFFIX, STATE_FILE
from .download import download_folder, download_main, prepare_oralxrays9
from .layout import normalise_layout
from .split import split_dataset, split_main
from .verify import SplitStats, VerifyReport, verify_dataset, verify_main

__all__ = [
    "ARCHIVE_PASSWORD",
    "DRIVE_FOLDER_URL",
    "PAPER_COUNTS",
    "PART_SUFFIX",
    "STATE_FILE",
    "DownloadError",
    "ExtractResult",
    "SplitStats",
    "VerifyReport",
    "download_folder",
    "download_main",
    "extract_archive",
    "normalise_layout",
    "prepare_oralxrays9",
    "split_dataset",
    "split_main",
    "verify_dataset",
    "verify_main",
]
