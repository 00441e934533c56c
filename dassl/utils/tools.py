"""Small file, JSON, random-seed and environment helpers (``dassl.utils.tools``)."""
import difflib
import errno
import functools
import json
import os
import os.path as osp
import random
import sys
import time
import uuid
import warnings

import numpy as np
import PIL
import torch
from PIL import Image

from .errors import UnknownNameError

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
]


def mkdir_if_missing(dirname):
    """Create ``dirname`` (and its parents) unless it exists; safe against concurrent creation."""
    if not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


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


def atomic_write(fpath, write_fn):
    """Create ``fpath`` atomically: ``write_fn(tmp_path)`` writes a temporary file in the same folder, which then
    replaces ``fpath`` (readers never see a partly written file; on failure ``fpath`` is left untouched)."""
    dirname, basename = osp.split(osp.abspath(fpath))
    tmp = osp.join(dirname, ".{}.{}.tmp".format(basename, uuid.uuid4().hex[:12]))  # normal file permissions
    try:
        write_fn(tmp)
        os.replace(tmp, fpath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


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
