"""Opening every image of a dataset once, to find the files a training run would fail on.

A file is readable when PIL identifies it *and decodes all of it* (``Image.load``): ``Image.verify`` alone, or a
check of the extension, lets zero-byte files, text files named ``.jpg`` and truncated JPEGs through, and each of
those then stops a run at the first batch (or a test split's only after every epoch has run). The images are
opened in threads (PIL decodes without holding the GIL); a large folder shows a progress bar on a terminal.
"""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

__all__ = ["unreadable_images", "describe"]

#: from this many images on, the check says what it does and shows a progress bar (on a terminal)
PROGRESS_FROM = 2000


def _problem(path):
    """``None`` when ``path`` decodes fully, else a short reason."""
    try:
        if os.path.getsize(path) == 0:
            return "an empty file"
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify its format)"
    except OSError as err:
        text = str(err)
        if "truncated" in text:
            return "truncated (" + text.split(" (")[0] + ")"
        return f"cannot be decoded ({type(err).__name__}: {text})"
    except Exception as err:  # PIL raises many types for broken files (SyntaxError, ValueError, ...)
        return f"cannot be decoded ({type(err).__name__}: {err})"
    return None


def unreadable_images(paths, workers=8, what="images"):
    """Open and decode every file of ``paths``; returns ``[(path, reason)]`` for those that fail, in order."""
    paths = list(paths)
    big = len(paths) >= PROGRESS_FROM
    start = time.time()
    if big:
        print(f"Opening {len(paths):,} {what} to check that each one decodes ({workers} threads) ...", flush=True)
    bar = None
    if big and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="checking images", unit="img", file=sys.stderr, leave=False)
    problems = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, reason in zip(paths, pool.map(_problem, paths, chunksize=32)):
            if reason is not None:
                problems.append((path, reason))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if big:
        print(f"Opened {len(paths):,} {what} in {time.time() - start:.1f} s: {len(problems)} unreadable", flush=True)
    return problems


def describe(problems):
    """``path (reason)`` strings, for messages."""
    return [f"{path} ({reason})" for path, reason in problems]
