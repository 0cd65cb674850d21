"""Fetch dataset archives from a URL or a local folder and check them against pinned checksums.

A *source* is either a local folder that holds the archives (offline machines, clusters whose
compute nodes have no internet) or a URL prefix (``https://...``, ``http://...`` or
``file:///...``) under which each archive is fetched by name. Downloads go to a temporary name
beside the target and are renamed only once complete and checked, so an interrupted download, a
truncated zip or a refused checksum never leaves a file under the final name, nor replaces one.

Every archive has a pinned checksum (sha256 where the official bytes were available to compute
it, md5 otherwise, as published). A copy whose checksum differs, e.g. a re-encoded mirror with
the same pixels, is accepted with a warning that names both checksums unless ``strict`` is set,
which turns the mismatch into a :class:`ChecksumError`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from dmaml import atomic
from dmaml.data.store import DatasetError

log = logging.getLogger(__name__)

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python"


@dataclass(frozen=True)
class Archive:
    """A published file and its pinned checksum (``sha256`` preferred, ``md5`` as published)."""

    filename: str
    md5: str
    sha256: str | None = None

    @property
    def pinned(self) -> tuple[str, str]:
        """The checksum to compare with: ``(algorithm, hex digest)``."""
        return ("sha256", self.sha256) if self.sha256 else ("md5", self.md5)


OMNIGLOT_ARCHIVES = {
    "images_background": Archive("images_background.zip", md5="68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation": Archive("images_evaluation.zip", md5="6b91aef0f799c5bb55b94e3f2daec811"),
    "images_background_small1": Archive(
        "images_background_small1.zip", md5="e704a628b5459e08445c13499850abc4",
        sha256="f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
    "images_background_small2": Archive(
        "images_background_small2.zip", md5="b75a71a51d3b13f821f212756fe481fd",
        sha256="3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
}


class DownloadError(DatasetError):
    """A file that could not be fetched (network, missing file, short read)."""


class ChecksumError(DatasetError):
    """A file whose checksum differs from the pinned one, in strict mode."""


def is_url(source: str | os.PathLike) -> bool:
    """Whether ``source`` is a URL (``http``, ``https`` or ``file``) rather than a local path."""
    return str(source).startswith(("http://", "https://", "file://"))


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """The md5 and sha256 hex digests of a file, read once in 1 MiB blocks."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def verify(path: str | os.PathLike, archive: Archive, *, strict: bool = False,
           origin: str | os.PathLike | None = None) -> dict[str, str]:
    """Compare ``path`` with the pinned checksum of ``archive`` and return its digests.

    A mismatch is logged as a warning naming both checksums and ``origin`` (where the file came
    from; default ``path``), or raised as :class:`ChecksumError` when ``strict``.
    """
    digests = file_digests(path)
    algorithm, expected = archive.pinned
    actual = digests[algorithm]
    if actual != expected:
        message = (f"{origin or path}: {algorithm} {actual} differs from the pinned {algorithm} "
                   f"{expected} of the official {archive.filename}")
        if strict:
            raise ChecksumError(f"{message}; use the official file, or accept this copy by turning "
                                "strict checking off (no `--strict`; config `strict: false`)")
        log.warning("%s; accepted as a local copy (strict checking is off)", message)
    return digests


def check_zip(path: str | os.PathLike, origin: str | os.PathLike | None = None) -> None:
    """Raise :class:`DownloadError` naming ``origin`` (default ``path``) unless ``path`` is a
    complete zip archive: its directory readable and every member's CRC right."""
    origin = origin or path
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        bad = e
    if bad is not None:
        raise DownloadError(f"{origin}: not a complete zip archive ({bad}); the file is truncated "
                            "or corrupt (e.g. an interrupted copy): copy it again or download "
                            "it anew, nothing was put in place")


def fetch(url: str, dest: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Download ``url`` (``http(s)://`` or ``file://``) to ``dest`` through a temporary name.

    Logs a progress line about every 2 seconds. Raises :class:`DownloadError` on a network
    error, a missing file or a response shorter than its announced length.
    """
    dest, name = Path(dest), url.rsplit("/", 1)[-1]
    try:
        with (atomic.replacing(dest) as tmp,
              urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out):
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            done, last = 0, time.monotonic()
            while block := response.read(1 << 16):
                out.write(block)
                done += len(block)
                if time.monotonic() - last >= 2.0:
                    last = time.monotonic()
                    log.info("%s: %s", name, _progress(done, total))
            if total is not None and done != total:
                raise DownloadError(f"{url}: received {done} of {total} bytes; the connection "
                                    "was cut, run the download again")
            log.info("%s: %s, done", name, _progress(done, total))
    except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        raise DownloadError(f"{url}: cannot download ({getattr(e, 'reason', e)}); check the "
                            "address and the network, or point the source at a local folder "
                            "holding the file") from None
    return dest


def _progress(done: int, total: int | None) -> str:
    if total:
        return f"{done / 1e6:.1f} / {total / 1e6:.1f} MB ({100 * done / total:.0f}%)"
    return f"{done / 1e6:.1f} MB"


def locate(source: str | os.PathLike, archive: Archive) -> Path | str:
    """Where ``archive`` lives in ``source``: a local path (checked to exist) or a URL."""
    if is_url(source):
        return f"{str(source).rstrip('/')}/{archive.filename}"
    path = Path(source) / archive.filename
    if not Path(source).is_dir():
        raise DownloadError(f"{source}: no such folder; set the source to a folder holding "
                            f"{archive.filename} or to a URL prefix such as {OMNIGLOT_URL}")
    if not path.is_file():
        raise DownloadError(f"{path}: no such file; put {archive.filename} in {source} or set "
                            f"the source to a URL prefix such as {OMNIGLOT_URL}")
    return path


def obtain(source: str | os.PathLike, archive: Archive, dest_dir: str | os.PathLike, *,
           strict: bool = False, timeout: float = 60.0) -> tuple[Path, dict[str, str]]:
    """Put a checked copy of ``archive`` from ``source`` into ``dest_dir``.

    A copy already in ``dest_dir`` is kept when it has the pinned checksum, and is checked in
    place when ``source`` is ``dest_dir`` itself. Otherwise the file is fetched (a local folder
    as a ``file://`` URL, the same way as a download) to a temporary name, checked with
    :func:`check_zip` and :func:`verify`, and only then renamed into place: a truncated zip or a
    strict mismatch raises and leaves ``dest_dir`` as it was. Returns the copy's path and its
    digests.
    """
    dest = Path(dest_dir) / archive.filename
    if dest.is_file():
        digests = file_digests(dest)
        if digests[archive.pinned[0]] == archive.pinned[1]:
            log.info("%s: present with the pinned checksum", dest)
            return dest, digests
    origin = locate(source, archive)
    if isinstance(origin, Path) and origin.resolve() == dest.resolve():
        return dest, verify(dest, archive, strict=strict)
    url = origin.resolve().as_uri() if isinstance(origin, Path) else origin
    log.info("%s: fetching %s", dest, url)
    with atomic.replacing(dest) as fetched:
        fetch(url, fetched, timeout=timeout)
        check_zip(fetched, origin)
        digests = verify(fetched, archive, strict=strict, origin=origin)
    return dest, digests
