"""dmaml.data.download: fetching through a temporary name, pinned checksums, local copies,
truncated zips refused before they replace anything."""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmaml.data.download import (
    OMNIGLOT_ARCHIVES,
    Archive,
    ChecksumError,
    DownloadError,
    fetch,
    file_digests,
    obtain,
    verify,
)

from .conftest import OMNIGLOT_DATA


def leftovers(folder: Path) -> list[str]:
    """Temporary files (hidden names) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture()
def payload(tmp_path) -> Path:
    """A real zip of 256 kB (stored, not compressed) in the folder ``src``."""
    path = tmp_path / "src" / "archive.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.bin", bytes(range(256)) * 1000)
    return path


def truncated_copy(payload: Path, folder: Path) -> Path:
    """A copy of ``payload`` cut at half its length (a killed copy), in ``folder``."""
    folder.mkdir()
    cut = folder / payload.name
    cut.write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])
    return cut


@pytest.fixture()
def http_server(payload) -> Iterator[str]:
    """A local HTTP server: ``/archive.zip`` served whole, ``/cut.zip`` cut short of its length."""
    body = payload.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            if self.path not in ("/archive.zip", "/cut.zip"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if self.path == "/archive.zip" else body[:1000])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_file_digests(payload):
    data = payload.read_bytes()
    assert file_digests(payload) == {"md5": hashlib.md5(data).hexdigest(),
                                     "sha256": hashlib.sha256(data).hexdigest()}


def test_fetch_file_url(payload, tmp_path):
    dest = fetch(payload.as_uri(), tmp_path / "out" / "archive.zip")
    assert dest.read_bytes() == payload.read_bytes()
    assert leftovers(dest.parent) == []


def test_fetch_http(http_server, payload, tmp_path):
    dest = fetch(f"{http_server}/archive.zip", tmp_path / "archive.zip")
    assert dest.read_bytes() == payload.read_bytes()


def test_fetch_cut_short_leaves_nothing(http_server, payload, tmp_path):
    with pytest.raises(DownloadError, match=f"received 1000 of {payload.stat().st_size} bytes"):
        fetch(f"{http_server}/cut.zip", tmp_path / "out" / "archive.zip")
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_http_error(http_server, tmp_path):
    with pytest.raises(DownloadError, match="missing.zip: cannot download"):
        fetch(f"{http_server}/missing.zip", tmp_path / "out" / "archive.zip")
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_missing_file_url(tmp_path):
    with pytest.raises(DownloadError, match="cannot download"):
        fetch((tmp_path / "nowhere.zip").as_uri(), tmp_path / "out.zip")
    assert list(tmp_path.iterdir()) == []


def test_verify_warns_with_both_checksums(payload, caplog):
    archive = Archive("archive.zip", md5="0" * 32)
    with caplog.at_level(logging.WARNING):
        digests = verify(payload, archive)
    assert digests["md5"] in caplog.text and "0" * 32 in caplog.text


def test_verify_strict_raises_with_both_checksums(payload):
    sha = "f" * 64
    with pytest.raises(ChecksumError, match=f"sha256 {file_digests(payload)['sha256']}.*{sha}"):
        verify(payload, Archive("archive.zip", md5="0" * 32, sha256=sha), strict=True)


def test_obtain_from_folder_and_url(payload, tmp_path, http_server):
    archive = Archive("archive.zip", md5=file_digests(payload)["md5"])
    for i, source in enumerate((payload.parent, payload.parent.as_uri(), http_server)):
        dest_dir = tmp_path / f"copy{i}"
        path, digests = obtain(source, archive, dest_dir)
        assert path == dest_dir / "archive.zip" and path.read_bytes() == payload.read_bytes()
        assert digests["md5"] == archive.md5


def test_obtain_keeps_a_copy_with_the_pinned_checksum(payload, tmp_path):
    archive = Archive("archive.zip", md5=file_digests(payload)["md5"])
    obtain(payload.parent, archive, tmp_path / "cache")
    payload.unlink()  # the source is gone (offline), the checked copy is enough
    path, _ = obtain(payload.parent, archive, tmp_path / "cache")
    assert path.is_file()


def test_obtain_strict_mismatch_removes_the_fetched_file(payload, tmp_path):
    with pytest.raises(ChecksumError, match="strict"):
        obtain(payload.parent, Archive("archive.zip", md5="0" * 32), tmp_path / "cache",
               strict=True)
    assert list((tmp_path / "cache").iterdir()) == []


def test_obtain_in_place_accepts_a_local_copy(payload, caplog):
    with caplog.at_level(logging.WARNING):
        path, _ = obtain(payload.parent, Archive("archive.zip", md5="0" * 32), payload.parent)
    assert path == payload and "accepted as a local copy" in caplog.text


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_obtain_refuses_a_truncated_zip(payload, tmp_path, as_url):
    cut = truncated_copy(payload, tmp_path / "cut")
    source = cut.parent.as_uri() if as_url else cut.parent
    archive = Archive("archive.zip", md5=file_digests(payload)["md5"])
    with pytest.raises(DownloadError, match=rf"{cut.as_uri() if as_url else cut}: .*truncated"
                                            r".*copy it again"):
        obtain(source, archive, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_refused_fetch_keeps_the_copy_present(payload, tmp_path):
    """A truncated source, or a strict checksum mismatch, leaves a copy already in place alone."""
    cache = tmp_path / "cache"
    accepted = Archive("archive.zip", md5="0" * 32)  # the present copy differs from the pin too
    obtain(payload.parent, accepted, cache)
    before = (cache / "archive.zip").read_bytes()
    with pytest.raises(DownloadError, match="truncated"):
        obtain(truncated_copy(payload, tmp_path / "cut").parent, accepted, cache)
    with pytest.raises(ChecksumError):
        obtain(payload.parent, accepted, cache, strict=True)
    assert (cache / "archive.zip").read_bytes() == before and leftovers(cache) == []


def test_missing_source(tmp_path):
    archive = OMNIGLOT_ARCHIVES["images_background"]
    with pytest.raises(DownloadError, match="no such folder"):
        obtain(tmp_path / "nowhere", archive, tmp_path)
    with pytest.raises(DownloadError, match="images_background.zip: no such file"):
        obtain(tmp_path, archive, tmp_path / "cache")


@pytest.mark.skipif(not OMNIGLOT_DATA.is_dir(), reason=f"{OMNIGLOT_DATA} not found")
def test_real_archives(caplog):
    """The official small subsets match their pins; the re-encoded full zips are accepted with
    a warning, and refused in strict mode."""
    for key in ("images_background_small1", "images_background_small2"):
        verify(OMNIGLOT_DATA / OMNIGLOT_ARCHIVES[key].filename, OMNIGLOT_ARCHIVES[key], strict=True)
    full = OMNIGLOT_ARCHIVES["images_evaluation"]
    with caplog.at_level(logging.WARNING):
        verify(OMNIGLOT_DATA / full.filename, full)
    assert full.md5 in caplog.text
    with pytest.raises(ChecksumError):
        verify(OMNIGLOT_DATA / full.filename, full, strict=True)
