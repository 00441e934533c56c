"""Small file, JSON, random-seed and environment helpers (``dassl.utils.tools``)."""
import difflib
import errno
import functools
import json
import os
import os.path as osp
import random
import re
import shutil
import sys
import time
import uuid
import warnings

import numpy as np
import PIL
import torch
from PIL import Image

from .errors import FileWriteError, UnknownNameError

__all__ = [
    "mkdir_if_missing",
    "check_isfile",
    "read_json",
    "write_json",
    "set_random_seed",
    "download_url",
    "read_image",
    "collect_env_info",
    "listdir_nohidden",
    "get_most_similar_str_to_a_from_b",
    "check_availability",
    "tolist_if_not",
    "atomic_write",
    "write_error",
    "remove_stale_temporary_files",
    "TEMPORARY_FILE",
]


def mkdir_if_missing(dirname):
    """Create ``dirname`` (and its parents) unless it exists; safe against concurrent creation.

    A folder that cannot be created (read-only, no permission, a file in the way, no space) is a one-line
    :class:`FileWriteError` (an ``OSError``).
    """
    if not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                problem = write_error(e, dirname)
                if problem is None:
                    raise
                raise problem from e


def check_isfile(fpath):
    """Return whether ``fpath`` is a file; warn ``No file found at "<fpath>"`` when it is not."""
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn('No file found at "{}"'.format(fpath))
    return isfile


def read_json(fpath):
    """Read a JSON file."""
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj, fpath):
    """Write ``obj`` to ``fpath`` as indented JSON, creating the parent folder."""
    mkdir_if_missing(osp.dirname(fpath) or ".")
    with open(fpath, "w") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))


#: The temporary files of :func:`atomic_write`: ``.<file name>.<12 hex digits>.tmp`` beside the file
TEMPORARY_FILE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")


def atomic_write(path, write, binary=False):
    """Create or replace ``path`` all at once: ``write(f)`` fills a temporary file in the same folder (``f`` is
    open for writing, UTF-8 text or ``binary``), which is flushed to the disk (``fsync``) and renamed over ``path``; the
    folder is then synced where the system allows it, so the new name survives a power cut as well.

    Readers never see a half-written file, and a write that fails leaves the old file (or none) in place, its
    temporary file removed. A killed process can leave the temporary file (``.<name>.<hex>.tmp``, see
    :data:`TEMPORARY_FILE`) behind: :func:`remove_stale_temporary_files` removes those. The folder is created if
    needed; the file gets the user's normal permissions (``0666`` less the umask, so ``0644`` under umask 022).

    Raises:
        FileWriteError: the file system refused the write (no space left, a quota, read-only, no permission, the
            folder vanished), also when a writer such as ``torch.save`` wraps the system's error in another
            exception; one line naming the file, the reason and what to do.
    """
    path = os.fspath(path)
    folder, name = osp.split(osp.abspath(path))
    tmp = osp.join(folder, ".{}.{}.tmp".format(name, uuid.uuid4().hex[:12]))
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        problem = write_error(err, path, tmp)
        if problem is None:
            raise
        raise problem from err
    _sync_folder(folder)


def _sync_folder(folder):
    """``fsync`` a folder (records a rename on the disk); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders
    finally:
        os.close(fd)


_EDQUOT = getattr(errno, "EDQUOT", errno.ENOSPC)
#: errors of the file system itself, whichever file they name
_FULL_OR_READ_ONLY = (errno.ENOSPC, _EDQUOT, errno.EROFS)
#: errors that are about the file being written only when they name it (or name no file)
_PATH_ERRNOS = (errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EEXIST)


def _system_error(err, paths):
    """The ``OSError`` behind ``err``: itself or one it was raised from or while handling (``torch.save`` turns a
    failed write into ``RuntimeError: ... unexpected pos ...`` raised while handling the ``OSError``), or one named
    only in a message (a C++ writer's ``No space left on device``)."""
    seen = set()
    chain = []
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        if isinstance(err, OSError) and (err.errno in _FULL_OR_READ_ONLY or (
                err.errno in _PATH_ERRNOS and (err.filename is None or _named(err.filename) in paths))):
            return err
        err = err.__cause__ or err.__context__
    for item in chain:
        text = str(item)
        for number in _FULL_OR_READ_ONLY:
            if os.strerror(number) in text:
                return OSError(number, os.strerror(number))
    return None


def _named(filename):
    """An error's file name as a string (tensorboard's are bytes), or None."""
    return os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else None


def _mount_point(path):
    path = osp.abspath(path)
    while not osp.ismount(path):
        parent = osp.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _existing_parent(path):
    path = osp.dirname(osp.abspath(path))
    while not osp.isdir(path):
        parent = osp.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _size(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return "{:.0f} {}".format(n, unit) if unit == "B" else "{:.1f} {}".format(n, unit)
        n /= 1024.0


def write_error(err, path, tmp=None):
    """A one-line :class:`FileWriteError` for an exception raised while writing ``path`` (through the temporary
    file ``tmp``) when the file system caused it (see :func:`atomic_write`); ``None`` for any other exception (a
    bug, Ctrl-C, a file *read* by the writer that is missing), which should propagate as it is."""
    if isinstance(err, FileWriteError):
        return err
    paths = {os.fspath(p) for p in (path, tmp) if p}
    paths |= {osp.abspath(p) for p in paths}
    folder = osp.dirname(osp.abspath(path))
    while folder not in paths:  # the folders above it (creating them fails on the first that cannot be made)
        paths.add(folder)
        folder = osp.dirname(folder)
    system = _system_error(err, paths) if isinstance(err, Exception) else None
    if system is None:
        return None
    number = system.errno
    folder = _existing_parent(path)
    if number == errno.ENOSPC:
        mount = _mount_point(folder)
        try:
            free = " ({} free)".format(_size(shutil.disk_usage(mount).free))
        except OSError:
            free = ""
        reason = 'no space left on the device of {}{} while writing "{}"'.format(mount, free, path)
        fix = "free space there, then run the same command again"
    elif number == _EDQUOT:
        reason = 'disk quota exceeded while writing "{}"'.format(path)
        fix = "free space within your quota, then run the same command again"
    elif number in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the file system is read-only" if number == errno.EROFS else "permission denied"
        reason = 'cannot write "{}": {}'.format(path, why)
        fix = "make it writable, or choose another folder, and run the same command again"
    elif number in (errno.ENOTDIR, errno.EEXIST):  # EEXIST: a file where its folder should be
        reason = 'cannot write "{}": a part of that path is a file, not a folder'.format(path)
        fix = "choose another path"
    else:  # ENOENT
        reason = 'cannot write "{}": its folder {} no longer exists (deleted or unmounted while in use)'.format(
            path, osp.dirname(osp.abspath(path)))
        fix = "check the disk and choose an existing folder"
    return FileWriteError(reason, fix, path=path, error_number=number)


def remove_stale_temporary_files(folder):
    """Remove the temporary files that :func:`atomic_write` calls in ``folder`` left behind when their process
    was killed (``.<name>.<hex>.tmp``; nothing else, and not in sub-folders). Only call it on a folder that no
    other process is writing to (a run's own folders, under its lock). Returns the paths removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in sorted(names):
        path = osp.join(folder, name)
        if TEMPORARY_FILE.match(name) and osp.isfile(path) and not osp.islink(path):
            try:
                os.remove(path)
            except OSError:
                continue
            removed.append(path)
    return removed


def set_random_seed(seed):
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def download_url(url, dst):
    """Download ``url`` to the file ``dst``, showing progress on stdout."""
    from urllib import request

    print('* url="{}"'.format(url))
    print('* destination="{}"'.format(dst))
    start = [time.time()]

    def _reporthook(count, block_size, total_size):
        if count == 0:
            start[0] = time.time()
            return
        duration = max(time.time() - start[0], 1e-6)
        progress_size = int(count * block_size)
        speed = int(progress_size / (1024 * duration))
        percent = int(count * block_size * 100 / total_size) if total_size > 0 else 0
        sys.stdout.write(
            "\r...%d%%, %d MB, %d KB/s, %d seconds passed"
            % (percent, progress_size / (1024 * 1024), speed, duration)
        )
        sys.stdout.flush()

    mkdir_if_missing(osp.dirname(dst) or ".")
    request.urlretrieve(url, dst, _reporthook)
    sys.stdout.write("\n")


def read_image(path):
    """Read an image file as an RGB ``PIL.Image``."""
    return Image.open(path).convert("RGB")


@functools.lru_cache(maxsize=1)
def collect_env_info():
    """Describe the environment (PyTorch's ``collect_env`` report plus Pillow's version).

    The report takes seconds to build (it runs external programs), so it is computed once per process.
    """
    from torch.utils.collect_env import get_pretty_env_info

    env_str = get_pretty_env_info()
    env_str += "\n        Pillow ({})".format(PIL.__version__)
    return env_str


def listdir_nohidden(path, sort=False):
    """List the names in ``path`` that do not start with a dot, sorted if ``sort``."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def get_most_similar_str_to_a_from_b(a, b):
    """Return the string of ``b`` most similar to ``a`` (difflib ratio; on ties the later one wins)."""
    highest_sim = 0
    chosen = None
    for candidate in b:
        sim = difflib.SequenceMatcher(None, a, candidate).ratio()
        if sim >= highest_sim:
            highest_sim = sim
            chosen = candidate
    return chosen


def check_availability(requested, available):
    """Raise :class:`UnknownNameError` (a ``ValueError``) unless ``requested`` is in ``available``.

    The message lists the available names and suggests the most similar one.
    """
    if requested not in available:
        suggestion = get_most_similar_str_to_a_from_b(requested, available)
        raise UnknownNameError(
            "The requested one is expected to belong to {}, but got [{}] (do you mean [{}]?)".format(
                list(available), requested, suggestion
            )
        )


def tolist_if_not(x):
    """Wrap ``x`` in a list unless it already is one."""
    if not isinstance(x, list):
        x = [x]
    return x
