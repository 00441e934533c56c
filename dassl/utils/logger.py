"""Tee ``sys.stdout`` into a log file (``dassl.utils.logger``)."""
import os
import os.path as osp
import sys
import time

from .tools import mkdir_if_missing

__all__ = ["Logger", "setup_logger"]


class Logger:
    """A file-like object that writes to the console and, if ``fpath`` is given, to that file.

    Args:
        fpath (str, optional): log file, opened for writing (its folder is created). The file is line-buffered:
            every complete line reaches the file when it is printed, so ``tail -f`` follows a run and a killed
            run's log ends with the last line it printed (Dassl's file is block-buffered).

    Example::

        sys.stdout = Logger(osp.join(output_dir, "log.txt"))
    """

    def __init__(self, fpath=None):
        self.console = sys.stdout
        self.file = None
        #: The path of the log file (``None`` without one): messages that say "see the log" name it.
        self.fpath = fpath
        if fpath is not None:
            mkdir_if_missing(osp.dirname(fpath) or ".")
            self.file = open(fpath, "w", buffering=1)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()

    def write(self, msg):
        self.console.write(msg)
        if self.file is not None:
            self.file.write(msg)

    def flush(self):
        self.console.flush()
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def isatty(self):
        """Whether the console this logger writes to is a terminal."""
        isatty = getattr(self.console, "isatty", None)
        return bool(isatty and isatty())

    def close(self):
        """Close the log file. The console is left open (it is the process's stdout)."""
        if getattr(self, "file", None) is not None:
            self.file.close()
            self.file = None


def _claim_log_name(fpath):
    """``fpath`` if it does not exist, else ``fpath-<timestamp>``: created empty here, so no other run takes it.

    Two attempts that start within the same second would get the same timestamped name (and the second would
    overwrite the first's log): then wait for the next second, keeping Dassl's name format.
    """
    mkdir_if_missing(osp.dirname(fpath) or ".")
    candidate = fpath
    for _ in range(50):
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return candidate
        except FileExistsError:
            if candidate != fpath:
                time.sleep(0.1)
            candidate = fpath + time.strftime("-%Y-%m-%d-%H-%M-%S")
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
