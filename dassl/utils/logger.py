"""Tee ``sys.stdout`` into a log file (``dassl.utils.logger``)."""
import os
import os.path as osp
import sys
import time

from .tools import mkdir_if_missing, write_error

__all__ = ["Logger", "setup_logger"]


class Logger:
    """A file-like object that writes to the console and, if ``fpath`` is given, to that file.

    Args:
        fpath (str, optional): log file, opened for writing (its folder is created). The file is line-buffered:
            every complete line reaches the file when it is printed, so ``tail -f`` follows a run and a killed
            run's log ends with the last line it printed (Dassl's file is block-buffered).

    A write to the file that fails (the disk is full, the folder vanished) does not stop the run: one
    ``warning:`` line on stderr says so, the console output continues, and from then on :attr:`file` and
    :attr:`fpath` are ``None``, so no message claims that something is in the log when it could not be written.

    Example::

        sys.stdout = Logger(osp.join(output_dir, "log.txt"))
    """

    def __init__(self, fpath=None):
        self.console = sys.stdout
        self._file = None
        self._fpath = fpath
        #: the error that stopped the writes to the log file (``None`` while they work)
        self.file_error = None
        if fpath is not None:
            mkdir_if_missing(osp.dirname(fpath) or ".")
            try:
                self._file = open(fpath, "w", buffering=1)
            except OSError as err:
                problem = write_error(err, fpath)
                if problem is None:
                    raise
                raise problem from err

    @property
    def fpath(self):
        """The path of the log file (``None`` without one, or once writing to it failed): messages that say "see
        the log" name it."""
        return self._fpath if self.file_error is None else None

    @property
    def file(self):
        """The log file, for writing to it alone (``None`` without one, or once writing to it failed). Its
        ``write`` and ``flush`` never raise: a failure is reported once and ends the writes to the file."""
        return _LogFile(self) if self._file is not None else None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()

    def write(self, msg):
        self.console.write(msg)
        self._to_file(msg)

    def _to_file(self, msg):
        if self._file is not None:
            try:
                self._file.write(msg)
            except OSError as err:
                self._lost(err)

    def flush(self):
        self.console.flush()
        self._flush_file()

    def _flush_file(self):
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as err:
                self._lost(err)

    def _lost(self, err):
        """Writing to the file failed: say so once on stderr and write to the console only from now on."""
        problem = write_error(err, self._fpath)
        why = problem.reason if problem is not None else 'cannot write "{}": {}'.format(
            self._fpath, err.strerror or err)
        self.file_error = err
        file, self._file = self._file, None
        try:
            file.close()
        except OSError:
            pass  # the rest of its buffer cannot be written either
        print("warning: {}; the log continues on this terminal only".format(why), file=sys.stderr, flush=True)

    def isatty(self):
        """Whether the console this logger writes to is a terminal."""
        isatty = getattr(self.console, "isatty", None)
        return bool(isatty and isatty())

    def close(self):
        """Close the log file. The console is left open (it is the process's stdout)."""
        file = getattr(self, "_file", None)
        if file is not None:
            try:
                file.close()
            except OSError as err:
                self._lost(err)
            self._file = None


class _LogFile:
    """The log file of a :class:`Logger` on its own (what ``logger.file`` returns): writes that fail are handled
    by the logger (reported once, then dropped)."""

    def __init__(self, logger):
        self._logger = logger

    def write(self, msg):
        self._logger._to_file(msg)
        return len(msg)

    def flush(self):
        self._logger._flush_file()


def _claim_log_name(fpath):
    """``fpath`` if it does not exist, else ``fpath-<timestamp>``: created empty here, so no other run takes it.

    Two attempts that start within the same second would get the same timestamped name (and the second would
    overwrite the first's log): then wait for the next second, keeping Dassl's name format.
    """
    mkdir_if_missing(osp.dirname(fpath) or ".")
    candidate = fpath
    for _ in range(50):
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return candidate
        except FileExistsError:
            if candidate != fpath:
                time.sleep(0.1)
            candidate = fpath + time.strftime("-%Y-%m-%d-%H-%M-%S")
        except OSError as err:  # a read-only or full output folder: one line
            problem = write_error(err, candidate)
            if problem is None:
                raise
            raise problem from err
    return candidate


def setup_logger(output=None):
    """Send everything printed to stdout to a log file as well.

    Args:
        output (str, optional): a ``.txt``/``.log`` file path, or a folder (the file is then ``<folder>/log.txt``).
            An existing file is never overwritten: a ``-%Y-%m-%d-%H-%M-%S`` suffix is added to the new one's name
            (unique: a second attempt within the same second waits for the next one).
            ``None`` does nothing.

    Returns:
        The installed :class:`Logger` (``None`` when ``output`` is ``None``).
    """
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    fpath = _claim_log_name(fpath)
    logger = Logger(fpath)
    sys.stdout = logger
    return logger
