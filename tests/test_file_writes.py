"""Writing files: the one ``atomic_write`` (synced, all or nothing, the user's permissions), a file system that
refuses a write as one line (``FileWriteError``), the temporary files a killed write leaves, and a log file that
cannot be written. Faults are made deterministically: a writer that raises the system's error, or a file object
that runs out of space after some bytes, as a full disk does under ``torch.save``."""
import errno
import io
import os
import stat
import sys

import pytest
import torch

from dassl.utils import (FileWriteError, Logger, RunLock, atomic_write, mkdir_if_missing,
                         remove_stale_temporary_files, write_error)
from dassl.utils.tools import TEMPORARY_FILE


def entries(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_normal_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "split.json", lambda f: f.write("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "split.json").st_mode) == mode


def test_the_file_and_then_its_folder_are_synced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "a" / "b.txt", lambda f: f.write("text"))  # the folder is created
    assert synced == [False, True]  # the file's bytes, then the folder entry of the rename
    assert (tmp_path / "a" / "b.txt").read_text() == "text" and entries(tmp_path / "a") == ["b.txt"]


def test_a_failing_writer_keeps_the_old_file_and_its_own_error(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")

    def writer(f):
        f.write("half")
        raise ValueError("a bug in the writer")

    with pytest.raises(ValueError, match="a bug in the writer"):  # not a file-system problem: unchanged
        atomic_write(path, writer)
    assert path.read_text() == "old" and entries(tmp_path) == ["result.json"]

    def reads_a_missing_file(f):
        with open(tmp_path / "absent.bin", "rb"):
            pass

    with pytest.raises(FileNotFoundError) as info:  # a file the writer *reads* is missing: not a write problem
        atomic_write(path, reads_a_missing_file)
    assert not isinstance(info.value, FileWriteError)


class FillsUp(io.RawIOBase):
    """A binary file object on a device with ``room`` bytes left: then every write fails with ENOSPC."""

    def __init__(self, f, room, number=errno.ENOSPC):
        self.f, self.room, self.number = f, room, number

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            raise OSError(self.number, os.strerror(self.number))
        self.room -= len(data)
        return self.f.write(data)


def _torch_save_on_full_disk(f):
    torch.save({"w": torch.zeros(10_000)}, FillsUp(f, 1000))


def _raises_enospc(f):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _cpp_message(f):
    raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed: No space left on device")


def _quota(f):
    torch.save({"w": torch.zeros(10_000)}, FillsUp(f, 1000, errno.EDQUOT))


@pytest.mark.parametrize("writer,words", [
    (_raises_enospc, "no space left on the device of"),
    (_torch_save_on_full_disk, "no space left on the device of"),  # RuntimeError: ... unexpected pos ..., chained
    (_cpp_message, "no space left on the device of"),
    (_quota, "disk quota exceeded"),
], ids=["oserror", "torch_save_chain", "message_only", "quota"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, writer, words):
    path = tmp_path / "model-last.pth.tar"
    path.write_bytes(b"the previous checkpoint")
    if writer is _torch_save_on_full_disk:  # what a full disk does to torch.save: no "no space" in its message
        with pytest.raises(RuntimeError) as raw:
            torch.save({"w": torch.zeros(10_000)}, FillsUp(io.BytesIO(), 1000))
        assert "No space left" not in str(raw.value) and "unexpected pos" in str(raw.value)
    with pytest.raises(FileWriteError) as info:
        atomic_write(path, writer, binary=True)
    message = str(info.value)
    assert message.startswith(words) and f'while writing "{path}"' in message and len(message.splitlines()) == 1
    assert "free space" in message and "run the same command again" in message
    assert info.value.errno in (errno.ENOSPC, errno.EDQUOT) and isinstance(info.value, OSError)
    assert path.read_bytes() == b"the previous checkpoint" and entries(tmp_path) == [path.name]


def test_a_path_under_a_file_is_one_line_even_as_root(tmp_path):
    """Permission bits do not stop root; a file where a folder should be stops everyone."""
    (tmp_path / "plain_file").write_text("")
    for target in (tmp_path / "plain_file" / "out" / "result.json", tmp_path / "plain_file" / "x.json"):
        with pytest.raises(FileWriteError, match="a part of that path is a file, not a folder; choose another path"):
            atomic_write(target, lambda f: f.write("{}"))
    with pytest.raises(FileWriteError, match="a part of that path is a file"):
        mkdir_if_missing(str(tmp_path / "plain_file" / "out"))
    with pytest.raises(FileWriteError, match="a part of that path is a file"):
        RunLock(str(tmp_path / "plain_file" / "out")).acquire()


@pytest.mark.parametrize("number,words", [(errno.EROFS, "the file system is read-only"),
                                          (errno.EACCES, "permission denied")])
def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch, number, words):
    """The system's answer for a read-only mount or a folder without write permission (which root would not get
    from permission bits, so it is made here)."""
    real = os.open

    def refusing_open(path, flags, mode=0o777, **kw):
        if flags & os.O_CREAT:
            raise OSError(number, os.strerror(number), path)
        return real(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(FileWriteError) as info:
        atomic_write(tmp_path / "checkpoint", lambda f: f.write("x"))
    assert f"{words}; make it writable, or choose another folder, and run the same command again" in str(info.value)
    assert entries(tmp_path) == []


def test_an_error_naming_the_file_in_bytes_is_recognised(tmp_path):
    """Tensorboard's writer names its file in bytes; a missing folder of *another* file is not a write error."""
    path = tmp_path / "tensorboard" / "events.out"
    err = FileNotFoundError(errno.ENOENT, "No such file or directory", os.fsencode(str(path)))
    assert "no longer exists" in str(write_error(err, str(path)))
    other = FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "elsewhere" / "x"))
    assert write_error(other, str(path)) is None


def test_only_the_projects_temporary_files_are_removed(tmp_path):
    names = [".model-last.pth.tar.0123456789ab.tmp", ".result.json.a1b2c3d4e5f6.tmp", ".run.lock.00000000000a.tmp"]
    kept = ["model-last.pth.tar", ".notes.tmp", "x.0123456789ab.tmp", ".model.0123456789AB.tmp", ".a.123.tmp",
            "checkpoint"]
    for name in names + kept:
        (tmp_path / name).write_text("")
    (tmp_path / ".folder.0123456789ab.tmp").mkdir()
    removed = remove_stale_temporary_files(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(names)
    assert entries(tmp_path) == sorted(kept + [".folder.0123456789ab.tmp"])
    # the name atomic_write gives its temporary file is the one recognised
    before = set(entries(tmp_path))
    seen = []
    atomic_write(tmp_path / "z.json", lambda f: seen.extend(set(os.listdir(tmp_path)) - before))
    assert len(seen) == 1 and TEMPORARY_FILE.match(seen[0]).group("name") == "z.json"


class Full:
    """A text file on a full disk."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    flush = write

    def fileno(self):
        return 0

    def close(self):
        pass


def test_a_log_file_that_cannot_be_written_is_reported_once_and_not_claimed(tmp_path, capsys):
    logger = Logger(str(tmp_path / "log.txt"))
    logger.write("first line\n")
    assert logger.fpath == str(tmp_path / "log.txt") and logger.file is not None
    file_alone = logger.file  # what train.py writes to the file alone (the config dump, a traceback)
    logger._file.close()
    logger._file = Full()  # the disk fills
    logger.write("second line\n")
    file_alone.write("only for the file\n")
    file_alone.flush()
    logger.flush()
    logger.write("third line\n")
    captured = capsys.readouterr()
    assert captured.out == "first line\nsecond line\nthird line\n"  # the terminal keeps everything
    warnings = captured.err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: no space left on the device of")
    assert "log.txt" in warnings[0] and warnings[0].endswith("the log continues on this terminal only")
    assert logger.fpath is None and logger.file is None  # nothing may say "see the log" any more
    assert (tmp_path / "log.txt").read_text() == "first line\n"
    logger.close()


def test_train_py_does_not_claim_a_traceback_is_in_a_log_it_could_not_write(tmp_path, capsys, monkeypatch):
    import dassl_tiny as tiny
    import train

    tiny.write_tiny_images(tmp_path)

    def crash(self, batch):
        sys.stdout._file.close()
        sys.stdout._file = Full()  # the disk fills, then the run fails with a bug
        raise RuntimeError("a bug")

    monkeypatch.setattr(tiny.DasslTinyLinear, "forward_backward", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        train.main(tiny.tiny_argv(tmp_path, tmp_path / "out"))
    err = capsys.readouterr().err
    assert "also in" not in err
    assert len([line for line in err.splitlines() if line.startswith("warning: no space left")]) == 1
