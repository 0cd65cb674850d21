"""The one atomic-write helper: the new file appears whole under its name, or not at all."""

import pytest

from dmaml import atomic


def test_write_text_and_bytes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    atomic.write_text(path, "new")
    assert path.read_text() == "new"
    atomic.write_bytes(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "figure.png"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.replacing(path, ".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".png"
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
