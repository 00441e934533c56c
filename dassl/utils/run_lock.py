"""One writer per output folder: ``<OUTPUT_DIR>/run.lock`` (not in Dassl).

A run takes the lock before it writes anything into its output folder and removes it when it ends, however it
ends (an exception, Ctrl-C). The file holds the owner's pid, host, start time and command line, so a second run
into the same folder stops at once with an error naming the running one. A lock left behind by a run that was
killed (SIGKILL, out of memory, a lost machine) is *stale*: on the same host it is detected (no process with that
pid, or one that started after the lock was written) and replaced with a one-line notice; from another host it
cannot be checked, and the error says which file to delete once that run is known to be gone.

The lock file is created with its full content in one step (a temporary file hard-linked to the lock name, which
fails if the name exists), so a reader never sees a half-written lock and two runs starting at the same moment
cannot both win.
"""
import json
import os
import os.path as osp
import socket
import sys
import time
import uuid

from .errors import UserError
from .tools import mkdir_if_missing, write_error

__all__ = ["RunLock", "RunLockedError", "LOCK_FILE"]

LOCK_FILE = "run.lock"


class RunLockedError(UserError):
    """Another run holds the output folder's lock."""


def _process_start(pid):
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or None if unknown."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22 of stat; the name in () may hold spaces
    except (IndexError, ValueError):
        return None


def _alive(owner):
    """Whether the process described by a lock record (on this host) still runs."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    started = owner.get("proc_start")
    now = _process_start(pid)
    if started is not None and now is not None and now != started:
        return False  # the pid was reused by a newer process
    return True


class RunLock:
    """The lock of one output folder.

    >>> lock = RunLock(output_dir).acquire()   # RunLockedError if another live run holds it
    >>> ...                                   # write into output_dir
    >>> lock.release()
    """

    def __init__(self, directory):
        self.directory = directory
        self.path = osp.join(directory, LOCK_FILE)
        self.record = None

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treated as stale only when old enough, see acquire()

    def acquire(self):
        """Take the lock (creating the folder); returns self. Raises :class:`RunLockedError` if it is held."""
        mkdir_if_missing(self.directory)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "proc_start": _process_start(os.getpid()),
            "command": " ".join(sys.argv),
        }
        for _ in range(3):
            if self._create(record):
                self.record = record
                return self
            owner = self._read()
            if owner is None:
                continue  # released meanwhile: try again
            if self._is_stale(owner, record["host"]):
                print('Removing a stale lock "{}" (pid {} on {} is no longer running)'.format(
                    self.path, owner.get("pid", "?"), owner.get("host", "?")))
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            raise RunLockedError(self._held_message(owner, record["host"]))
        raise RunLockedError('could not take the lock "{}"; another run keeps replacing it'.format(self.path))

    def _create(self, record):
        tmp = osp.join(self.directory, ".{}.{}.tmp".format(LOCK_FILE, uuid.uuid4().hex[:12]))
        try:
            with open(tmp, "w") as f:
                json.dump(record, f)
                f.write("\n")
            os.link(tmp, self.path)  # atomic, and fails if the lock exists
            return True
        except FileExistsError:
            return False
        except OSError as err:  # a read-only or full output folder: one line
            problem = write_error(err, self.path, tmp)
            if problem is None:
                raise
            raise problem from err
        finally:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass

    def _is_stale(self, owner, host):
        if not owner:  # empty or unreadable (not written by this class): stale once it is a minute old
            try:
                return time.time() - os.path.getmtime(self.path) > 60
            except OSError:
                return True
        return owner.get("host") == host and not _alive(owner)

    def _held_message(self, owner, host):
        if not owner:
            return 'the output folder "{}" is locked by an unreadable "{}"; if no run writes there, delete it'.format(
                self.directory, self.path)
        where = "pid {} on {}".format(owner.get("pid"), owner.get("host"))
        msg = 'another run is writing to "{}": {}, started {} ({})'.format(
            self.directory, where, owner.get("started"), owner.get("command"))
        if owner.get("host") != host:
            return msg + '; wait for it or choose another --output-dir; if that run is gone, delete "{}"'.format(
                self.path)
        return msg + "; wait for it to end or choose another --output-dir"

    def release(self):
        """Remove the lock if this object holds it (safe to call twice)."""
        if self.record is None:
            return
        owner = self._read()
        if owner and owner.get("pid") == self.record["pid"] and owner.get("host") == self.record["host"]:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.record = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
