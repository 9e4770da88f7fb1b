from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from cnnapps.errors import CnnappsError
from cnnapps.files import OutputExistsError, atomic_write, current_umask


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_bytes_are_written_with_the_usual_mode(tmp_path: Path, umask_022) -> None:
    path = atomic_write(tmp_path / "deep" / "er" / "model.bin", b"weights")
    assert path == tmp_path / "deep" / "er" / "model.bin"
    assert path.read_bytes() == b"weights"
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.bin"]


def test_mode_honours_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        assert current_umask() == 0o077
        path = atomic_write(tmp_path / "private.bin", b"x")
        shared = atomic_write(tmp_path / "script.sh", b"x", mode=0o755)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert shared.stat().st_mode & 0o777 == 0o700


def test_a_writer_function_gets_a_fresh_temporary_path(tmp_path: Path, umask_022) -> None:
    seen: list[Path] = []

    def save(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".metrics.json.") and tmp.name.endswith(".tmp")
        assert tmp.exists() and tmp.stat().st_size == 0  # created empty by mkstemp, with O_EXCL
        tmp.write_text('{"top1": 0.9}')

    atomic_write(tmp_path / "metrics.json", save)
    assert (tmp_path / "metrics.json").read_text() == '{"top1": 0.9}'
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert not seen[0].exists()


def test_existing_files_are_kept_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError) as info:
        atomic_write(path, b"new")
    assert str(info.value) == f"{path}: already exists; choose another output path"
    assert isinstance(info.value, CnnappsError) and isinstance(info.value, FileExistsError)
    assert path.read_bytes() == b"old"
    atomic_write(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_file_appearing_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"

    def slow_writer(tmp: Path) -> None:
        tmp.write_bytes(b"mine")
        path.write_bytes(b"someone else's")  # another process takes the name while we write

    with pytest.raises(OutputExistsError) as info:
        atomic_write(path, slow_writer)
    assert path.read_bytes() == b"someone else's"  # theirs is not replaced, and ours is not lost
    kept = tmp_path / "out-1.bin"
    assert kept.read_bytes() == b"mine"
    assert (
        str(info.value)
        == f"{path}: another file took this name while it was written; what was written is kept in {kept}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-1.bin", "out.bin"]
    path.unlink()
    (tmp_path / "out-2.bin").write_bytes(b"")  # the next free name is taken
    with pytest.raises(OutputExistsError, match=r"kept in .*out-3\.bin$"):
        atomic_write(path, slow_writer)
    assert (tmp_path / "out-3.bin").read_bytes() == b"mine" and (tmp_path / "out-2.bin").read_bytes() == b""


def test_symlinks_are_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "out.png").symlink_to(victim)
    with pytest.raises(OutputExistsError):
        atomic_write(tmp_path / "out.png", b"new")
    atomic_write(tmp_path / "out.png", b"new", overwrite=True)
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "out.png").is_symlink() and (tmp_path / "out.png").read_bytes() == b"new"


def test_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    def disk_full(tmp: Path) -> None:
        tmp.write_bytes(b"half of a mod")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "model.bin", disk_full)
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "model.bin").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "model.bin", lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"] and (tmp_path / "model.bin").read_bytes() == b"old"


def test_concurrent_writers_each_leave_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(path, p), kwargs={"overwrite": True}) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_an_output_whose_folder_cannot_be_made_or_written_in_is_a_one_line_error(tmp_path: Path, monkeypatch) -> None:
    """Found late (a check before the work cannot see everything: root is refused by /proc, not by os.access), it
    was FileExistsError or PermissionError, which the command line printed as an unexpected failure (exit 3)."""
    import tempfile

    from cnnapps.files import made_folder

    (tmp_path / "afile").write_text("mine")
    target = tmp_path / "afile" / "sub" / "x.png"
    with pytest.raises(CnnappsError) as info:
        atomic_write(target, b"picture")
    assert str(info.value) == (
        f"{target}: cannot make its folder {target.parent} ({tmp_path / 'afile'} is a file, not a folder)"
    )
    with pytest.raises(CnnappsError, match=r"drawn: cannot make this folder \(.*afile is a file, not a folder\)$"):
        made_folder(tmp_path / "afile" / "drawn")

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(CnnappsError) as info:
        atomic_write(tmp_path / "x.png", b"picture")
    assert str(info.value) == f"{tmp_path / 'x.png'}: cannot be written in {tmp_path} (Permission denied)"
    assert (tmp_path / "afile").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
