"""Shared dataset schema and file location for every loader.

`locate` finds a dataset folder in this order: `dataset.path`, `$LLMREC_DATA_DIR/<subdir>`,
`<cache>/raw/<subdir>`, and last a download of `dataset.url` (checked against `dataset.sha256`).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from llmrec_cli.errors import DataError
from llmrec_cli.utils.io import atomic_path, cache_dir, data_dir, sha256_file

log = logging.getLogger(__name__)

# A required entry is a file name, or a tuple of alternative names of which one must exist.
Required = Sequence[str | tuple[str, ...]]


@dataclass
class DatasetConfig:
    """Hydra schema shared by all datasets (`conf/dataset/*.yaml`). Loaders subclass it to add fields."""

    name: str = MISSING  # dataset name used in run names and the cache key
    loader: str = MISSING  # registry key of the loader (`llmrec ls datasets`)
    path: str | None = None  # local folder (or file, for csv) that overrides every other source
    url: str | None = None  # official download URL
    sha256: str | None = None  # checksum of the download
    min_rating: float | None = None  # ratings below are dropped; None keeps all
    kcore: int = 5  # iterative k-core on users and items
    min_user_interactions: int = 3  # users with fewer interactions after k-core are dropped
    split: str = "loo"  # loo (chronological leave-one-out) | temporal (global time quantiles, see split_time)
    split_time: list[float] = field(default_factory=lambda: [0.8, 0.9])  # temporal: valid / test start quantiles
    item_noun: str = "item"  # how prompts name an item ("movie", "product"); not part of the data


def hash_files(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{path: sha256} for every file read, for RawData.files."""
    return {str(Path(p)): sha256_file(p) for p in paths}


def missing_files(folder: Path, required: Required) -> list[str]:
    """Entries of REQUIRED that FOLDER lacks (alternatives shown as `a|b`)."""
    out = []
    for entry in required:
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        if not any((folder / n).is_file() for n in names):
            out.append("|".join(names))
    return out


def locate(cfg, subdir: str, required: Required, default_url: str | None = None,
           default_sha256: str | None = None) -> Path:
    """Return the folder holding REQUIRED files for dataset SUBDIR (see module docstring for the order).

    DEFAULT_URL / DEFAULT_SHA256 are used when `dataset.url` is not set.
    """
    path = getattr(cfg, "path", None)
    if path:
        folder = Path(str(path)).expanduser()
        if not folder.is_dir():
            raise DataError(f"dataset.path={folder} is not a folder: point dataset.path at the folder holding "
                            f"{', '.join(_names(required))}")
        lacking = missing_files(folder, required)
        if lacking:
            raise DataError(f"dataset.path={folder} lacks {', '.join(lacking)}: point dataset.path at the "
                            f"folder holding the original {subdir} files")
        return folder
    root = data_dir()
    if root is not None and not missing_files(root / subdir, required):
        return root / subdir
    cached = cache_dir() / "raw" / subdir
    if cached.is_dir() and not missing_files(cached, required):
        return cached
    url = getattr(cfg, "url", None) or default_url
    sha = getattr(cfg, "sha256", None) if getattr(cfg, "url", None) else default_sha256
    hint = f"set LLMREC_DATA_DIR to a folder holding {subdir}/ or pass dataset.path=<folder>"
    if root is not None:
        lacking = missing_files(root / subdir, required)
        hint = (f"LLMREC_DATA_DIR={root} has no {subdir}/ sub-folder" if not (root / subdir).is_dir() else
                f"{root / subdir} lacks {', '.join(lacking)}") + "; add it there or pass dataset.path=<folder>"
    if not url:
        raise DataError(f"dataset {subdir} not found locally and dataset.url is not set: {hint}")
    folder = download(url, sha, subdir, hint)
    lacking = missing_files(folder, required)
    if lacking:
        raise DataError(f"download of {url} into {folder} lacks {', '.join(lacking)}: {hint}")
    return folder


def download(url: str, sha256: str | None, subdir: str, hint: str) -> Path:
    """Download URL into <cache>/raw, verify SHA256, extract zips into <cache>/raw/<subdir>; return it."""
    raw = cache_dir() / "raw"
    target = raw / subdir
    archive = raw / (Path(url.split("?")[0]).name or f"{subdir}.download")
    if not archive.is_file():
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(archive) as tmp:
                with open(tmp, "wb") as f:
                    shutil.copyfileobj(resp, f)
        except (OSError, ValueError) as err:  # URLError is an OSError
            raise DataError(f"could not download dataset.url={url} ({err}): {hint}") from None
    digest = sha256_file(archive)
    if sha256 and digest != sha256.lower():
        archive.unlink()
        raise DataError(f"dataset.sha256 mismatch for {url}: got {digest}, expected {sha256}; "
                        f"the file was deleted: check dataset.url and dataset.sha256")
    if not sha256:
        log.warning("no dataset.sha256 set for %s; its sha256 is %s", url, digest)
    if zipfile.is_zipfile(archive):
        _extract(archive, target, subdir)
    else:
        target.mkdir(parents=True, exist_ok=True)
        os.replace(archive, target / archive.name)
    return target


def _extract(archive: Path, target: Path, subdir: str) -> None:
    """Extract ARCHIVE into a temp dir next to TARGET, then move it into place with os.replace."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{subdir}.", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)  # zipfile drops absolute paths and `..` components
        entries = [p for p in tmp.iterdir() if p.name != "__MACOSX"]
        if (tmp / subdir).is_dir():
            source = tmp / subdir
        elif len(entries) == 1 and entries[0].is_dir():
            source = entries[0]
        else:
            source = tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(source, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _names(required: Required) -> list[str]:
    return [e if isinstance(e, str) else "|".join(e) for e in required]
