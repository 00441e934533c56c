"""Download, extract and verify the datasets: ``python -m datasets.prepare <name|all> --root DATA``.

For each file of the dataset (``datasets/sources.py``) that is not in place yet, in this order of preference:
a matching ``--archive`` file, a copy of an existing file (``copy_from``), ``--mirror URL/<file name>``, the
public URL, the Google Drive id. Archives are extracted into ``DATA/.prepare/extract/`` and their folders moved
into the dataset's layout; downloaded archives are then deleted unless ``--keep-archives``. Downloads resume
(``DATA/.prepare/downloads/*.part``).

Then every image named by the split (split file, list files or class folders) must exist and decode in full
with PIL (:mod:`datasets.images`); missing and unreadable images are reported by name, with the reason. A
verified dataset gets ``<dataset folder>/.prepare.json`` recording the state it was verified in; running the
command again is then a no-op while the split and the list of images are unchanged (``--verify-only`` checks
everything again; ``--force`` fetches everything again).

``--check`` (and :func:`ensure_dataset`, for scripts) only looks at the layout and fails with what to download
and where to put it when something is missing; it never uses the network. For a dataset that builds itself
(Digits, your own ImageFolder data) it also opens every image, unless they were verified as they are now.

ImageNet (and ImageNet-Sketch, without ``--archive``) have no public download: the command fetches what it can
(``classnames.txt``) and prints exactly what to place where.

Exit status: 0 on success, 2 with ``error: ...`` on a problem (``all``: after trying every dataset).
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import random
import shutil
import sys
import time

from dassl.data.datasets import DATASET_REGISTRY
from .errors import UserError

from . import download as dl
from .images import describe, unreadable_images
from .sources import SOURCES
from .splits import atomic_write, missing_files_message, prepare_command, save_split

__all__ = ["dataset_class", "prepare", "verify", "ensure_dataset", "what_to_download", "main"]

STATE_FILE = ".prepare.json"
WORK_DIR = ".prepare"


# --------------------------------------------------------------------------------------------------------------
# Names and state
# --------------------------------------------------------------------------------------------------------------
def _classes():
    import datasets  # noqa: F401  (registers every dataset)

    out = {}
    for name in DATASET_REGISTRY.registered_names():
        cls = DATASET_REGISTRY.get(name)
        if getattr(cls, "config_name", "") in SOURCES or getattr(cls, "builds_itself", False):
            out[cls.config_name] = cls
    return out


def dataset_class(name):
    """The dataset class for a config name (``eurosat``) or a registry name (``EuroSAT``)."""
    classes = _classes()
    if name in classes:
        return classes[name]
    for cls in classes.values():
        if cls.__name__.lower() == name.lower():
            return cls
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(classes))} (or all)")


def _state_path(cls, root):
    return osp.join(root, cls.dataset_dir, STATE_FILE)


def _read_state(cls, root):
    try:
        with open(_state_path(cls, root)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_state(cls, root, state):
    atomic_write(_state_path(cls, root), lambda f: json.dump(state, f, indent=2, sort_keys=True))


def _fingerprint(entries, dataset_dir):
    """Hash of the split as named: every (relative path, label, class name), in order."""
    h = hashlib.sha256()
    for key in ("train", "val", "test"):
        h.update(key.encode())
        for impath, label, classname in entries.get(key, []):
            h.update(f"{osp.relpath(impath, dataset_dir)}\t{label}\t{classname}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------------------
def verify(name, root, workers=8):
    """Check that every image the dataset names exists and decodes (each one is opened and read in full, see
    :mod:`datasets.images`); returns a summary dict.

    Raises :class:`UserError` listing the missing files (split/list files, then images by name: the first ten
    and a count) and the unreadable images, each with its reason.
    """
    cls = dataset_class(name)
    root = osp.abspath(osp.expanduser(root))
    dataset_dir = osp.join(root, cls.dataset_dir)
    cls.require_dir(dataset_dir, root)
    missing_meta = [f for f in cls.required_files() if not osp.isfile(osp.join(dataset_dir, f))]
    if missing_meta:
        raise UserError(
            f"{cls.__name__}: missing in {dataset_dir}: {', '.join(missing_meta)}\n"
            f"Fetch them with: {prepare_command(cls.config_name, root)}"
        )
    entries = cls.image_entries(dataset_dir)
    paths = sorted({e[0] for key in ("train", "val", "test") for e in entries.get(key, [])})
    print(f"Verifying {len(paths):,} images of {cls.__name__} in {dataset_dir}")
    missing = [p for p in paths if not osp.isfile(p)]
    present = [p for p in paths if osp.isfile(p)] if missing else paths
    unreadable = describe(unreadable_images(present, workers, f"images of {cls.__name__}"))
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(paths)} images are missing:\n{missing_files_message(missing)}")
    if unreadable:
        problems.append(f"{len(unreadable)} of {len(paths)} images do not open:\n{missing_files_message(unreadable)}")
    if problems:
        raise UserError(f"{cls.__name__} in {dataset_dir} is incomplete.\n" + "\n".join(problems))
    summary = verified_summary(entries, dataset_dir)
    labels = {e[1] for key in ("train", "test") for e in entries.get(key, [])}
    note = "" if len(labels) == cls.full_num_classes else f" (the full dataset has {cls.full_num_classes})"
    print(
        f"{cls.__name__}: {len(paths):,} images verified, {len(labels)} classes{note}; "
        f"train/val/test {summary['splits']['train']:,}/{summary['splits']['val']:,}/{summary['splits']['test']:,}"
    )
    return summary


def _files_fingerprint(entries):
    """Hash of every named image's size and modification time: changes when a file is replaced, truncated or
    removed (one ``stat`` per image, no reading)."""
    h = hashlib.sha256()
    for path in sorted({e[0] for key in ("train", "val", "test") for e in entries.get(key, [])}):
        try:
            st = os.stat(path)
            h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{path}\tmissing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def verified_summary(entries, dataset_dir):
    """What ``.prepare.json`` records about a dataset whose every image was found to decode."""
    paths = {e[0] for key in ("train", "val", "test") for e in entries.get(key, [])}
    return {
        "images": len(paths),
        "classes": len({e[1] for key in ("train", "test") for e in entries.get(key, [])}),
        "splits": {key: len(entries.get(key, [])) for key in ("train", "val", "test")},
        "fingerprint": _fingerprint(entries, dataset_dir),
        "files": _files_fingerprint(entries),
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def mark_verified(cls, root, summary):
    """Record that the dataset's images were all opened (``<dataset folder>/.prepare.json``)."""
    _write_state(cls, root, {"dataset": cls.config_name, "verified": summary})


def _still_verified(cls, root, dataset_dir):
    """The recorded verification, when the split still names the same images (else ``None``); for a dataset that
    builds itself (your own data) also when no image file changed since (sizes and modification times)."""
    state = _read_state(cls, root)
    verified = state.get("verified")
    if not verified:
        return None
    try:
        entries = cls.image_entries(dataset_dir)
    except (UserError, OSError):
        return None
    if _fingerprint(entries, dataset_dir) != verified.get("fingerprint"):
        return None
    if getattr(cls, "builds_itself", False) and _files_fingerprint(entries) != verified.get("files"):
        return None
    return verified


# --------------------------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------------------------
def _local_file(remote, archives):
    for path in archives:
        if osp.isdir(path) and osp.isfile(osp.join(path, remote.filename)):
            return osp.join(path, remote.filename)
        if osp.isfile(path) and osp.basename(path) == remote.filename:
            return path
    return None


def _obtain(remote, root, mirror, archives, quiet):
    """Put ``remote`` in place. Returns False when it has no source here (no URL, no Drive id, nothing local)."""
    work = osp.join(root, WORK_DIR)
    local = _local_file(remote, archives)
    dest = osp.join(root, remote.dest)
    downloaded = None
    if local:
        print(f"Using local file {local}")
        path = local
    elif remote.copy_from and remote.copy_from != remote.dest and osp.isfile(osp.join(root, remote.copy_from)):
        print(f"Copying {osp.join(root, remote.copy_from)} to {dest}")
        path = local = osp.join(root, remote.copy_from)
    else:
        path = downloaded = osp.join(work, "downloads", remote.filename)
        if mirror:
            dl.http_download(f"{mirror.rstrip('/')}/{remote.filename}", path, quiet=quiet)
        elif remote.url:
            dl.http_download(remote.url, path, quiet=quiet)
        elif remote.gdrive_id:
            dl.gdrive_download(remote.gdrive_id, path, quiet=quiet)
        else:
            return False

    if remote.is_archive:
        try:
            extracted = dl.extract(path, osp.join(work, "extract", remote.filename))
        except UserError:
            if downloaded:  # a broken download: fetch it afresh next time
                os.remove(downloaded)
            raise
        for member in remote.members:
            src = extracted if member == "." else osp.join(extracted, member)
            if osp.exists(src):
                break
        else:
            top = ", ".join(sorted(os.listdir(extracted))[:10])
            shutil.rmtree(extracted, ignore_errors=True)
            raise UserError(
                f"{path} holds none of the expected folders {list(remote.members)} (its top level: {top})"
            )
        dl.install(src, dest)
        shutil.rmtree(extracted, ignore_errors=True)
    elif local:
        def copy(f):
            with open(local, "rb") as source:
                shutil.copyfileobj(source, f)

        atomic_write(dest, copy, binary=True)
    else:
        dl.install(path, dest)
        downloaded = None
    return downloaded or True


def _describe(remote, root):
    where = osp.join(root, remote.dest)
    if remote.url:
        origin = remote.url
    elif remote.gdrive_id:
        origin = f"https://drive.google.com/uc?id={remote.gdrive_id} (Google Drive)"
    else:
        origin = "(no public download; see below)"
    what = f"extract its {' or '.join(repr(m) for m in remote.members)} to" if remote.is_archive else "save it as"
    text = f"  {remote.filename}: {origin}\n      {what} {where}"
    if remote.copy_from and remote.copy_from != remote.dest:
        text += f"\n      (or copy {osp.join(root, remote.copy_from)} there)"
    return text + ("" if remote.required else "  [optional: only --generate-split reads it]")


def what_to_download(name, root, only_missing=True):
    """Text listing the files of a dataset (the missing ones by default): source and where each one goes."""
    cls = dataset_class(name)
    root = osp.abspath(osp.expanduser(root))
    source = SOURCES[cls.config_name]
    files = [r for r in source.files if not (only_missing and osp.exists(osp.join(root, r.present_if)))]
    lines = [f"{cls.__name__} is expected in {osp.join(root, cls.dataset_dir)} (see DATASETS.md)."]
    if files:
        lines.append("Files to get:")
        lines += [_describe(r, root) for r in files]
    if source.manual:
        lines.append(source.manual.format(root=root))
    lines.append(
        f"With network access: {prepare_command(cls.config_name, root)} "
        "[--mirror URL] [--archive FILE_OR_FOLDER]"
    )
    return "\n".join(lines)


def prepare(name, root, mirror=None, archives=(), verify_only=False, force=False, keep_archives=False,
            generate_split=False, seed=1, workers=8, quiet=False):
    """Fetch, extract and verify one dataset (see the module docstring). Returns the verification summary."""
    cls = dataset_class(name)
    root = osp.abspath(osp.expanduser(root))
    dataset_dir = osp.join(root, cls.dataset_dir)
    builds_itself = getattr(cls, "builds_itself", False)  # Digits, your own ImageFolder data: nothing to download
    if builds_itself:
        cls.generate_split(dataset_dir)
    print(f"== {cls.config_name} ({cls.__name__}) in {dataset_dir}")

    verified = None if (verify_only or force or generate_split) else _still_verified(cls, root, dataset_dir)
    if verified:
        print(
            f"Already prepared and verified on {verified.get('verified_at')} "
            f"({verified.get('images', 0):,} images); nothing to do (--verify-only checks again)."
        )
        return verified

    if not (builds_itself or verify_only):
        source = SOURCES[cls.config_name]
        archives = [osp.abspath(osp.expanduser(a)) for a in archives]
        unsourced = []
        split_dest = f"{cls.dataset_dir}/{cls.split_file}"
        for remote in source.files:
            if osp.exists(osp.join(root, remote.present_if)) and not force:
                continue
            if generate_split and remote.dest == split_dest:
                continue  # drawn below instead
            try:
                got = _obtain(remote, root, mirror, archives, quiet)
            except UserError as err:
                if not remote.required:
                    print(f"Warning: optional file {remote.filename} not fetched ({err})")
                    continue
                if isinstance(err, dl.DownloadError):
                    raise UserError(f"{err}\n{what_to_download(name, root)}") from err
                raise
            if got is False:
                unsourced.append(remote)
            elif isinstance(got, str) and not keep_archives:
                os.remove(got)
        manual_part_missing = source.manual or any(r.required for r in unsourced)
        if manual_part_missing and not osp.isdir(osp.join(dataset_dir, cls.image_subdir)):
            raise UserError(what_to_download(name, root))
        _make_split(cls, dataset_dir, generate_split, force, seed)
    elif hasattr(cls, "write_split") and not osp.isfile(osp.join(dataset_dir, cls.split_file)):
        cls.write_split(dataset_dir)

    summary = verify(name, root, workers=workers)
    mark_verified(cls, root, summary)
    return summary


def _make_split(cls, dataset_dir, generate, force, seed):
    split_path = osp.join(dataset_dir, cls.split_file) if cls.split_file else None
    if hasattr(cls, "write_split") and split_path and not osp.isfile(split_path):
        cls.write_split(dataset_dir)  # Caltech256: a generated split is its official one
    if not generate:
        return
    if split_path is None:
        raise UserError(f"{cls.__name__} has no split file to generate (its split comes with the data)")
    if osp.isfile(split_path) and not force:
        raise UserError(f"{split_path} exists; add --force to replace it with a newly drawn split")
    random.seed(seed)
    print(f"Drawing a new random split (seed {seed}); results on it are not comparable to published ones")
    train, val, test = cls.generate_split(dataset_dir)
    save_split(train, val, test, split_path, cls.split_prefix(dataset_dir))


# --------------------------------------------------------------------------------------------------------------
# For scripts
# --------------------------------------------------------------------------------------------------------------
def ensure_dataset(name, root):
    """Return the dataset folder when the dataset looks usable; else raise :class:`UserError` saying what to get.

    Offline: a dataset verified by ``prepare`` passes on its marker (``.prepare.json``, while the split names the
    same images); otherwise the image folder and the split/list files must exist (images are not opened; a note
    suggests ``--verify-only``). A dataset that builds itself (Digits, your own ImageFolder data) is built or its
    files checked, and, unless its marker says it was verified with the same image files (names, sizes,
    modification times), every image is opened and the marker written: so only the first check after a change
    takes as long as opening the images (``python -m datasets.imagefolder`` opens them itself and writes it).
    """
    cls = dataset_class(name)
    root = osp.abspath(osp.expanduser(root))
    dataset_dir = osp.join(root, cls.dataset_dir)
    if getattr(cls, "builds_itself", False):
        cls.generate_split(dataset_dir)
        if not _still_verified(cls, root, dataset_dir):
            summary = verify(name, root)
            try:
                mark_verified(cls, root, summary)
            except OSError as err:  # a read-only data folder: the next check opens the images again
                print(f"Note: could not record the verification in {_state_path(cls, root)} ({err})")
        return dataset_dir
    required = [osp.join(dataset_dir, f) for f in cls.required_files()]
    complete = osp.isdir(osp.join(dataset_dir, cls.image_subdir)) and all(osp.isfile(p) for p in required)
    if complete and _read_state(cls, root).get("verified"):
        return dataset_dir
    if complete:
        print(
            f"Note: {cls.__name__} in {dataset_dir} has not been verified; for a full check run "
            f"{prepare_command(cls.config_name, root, '--verify-only')}"
        )
        return dataset_dir
    raise UserError(f"{cls.__name__} is missing or incomplete under {root}.\n" + what_to_download(name, root))


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser(
        prog="python -m datasets.prepare",
        description="Download, extract and verify CoOp-format datasets (see DATASETS.md).",
    )
    p.add_argument("name", help=f"dataset: {', '.join(SOURCES)}, or all")
    p.add_argument("--root", required=True, help="data root (DATASET.ROOT / train.py --root)")
    p.add_argument("--mirror", help="base URL serving the same file names (used instead of the public URLs)")
    p.add_argument("--archive", action="append", default=[], help="a local archive/file or a folder of them "
                   "(repeatable); matched by file name")
    p.add_argument("--verify-only", action="store_true", help="download nothing; check every image again")
    p.add_argument("--check", action="store_true", help="fast offline check of the layout (for scripts); "
                   "exits 2 with what to download when something is missing")
    p.add_argument("--force", action="store_true", help="fetch every file again")
    p.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extraction")
    p.add_argument("--generate-split", action="store_true", help="draw a new random split from the raw "
                   "annotations instead of the published split file (not comparable to papers)")
    p.add_argument("--seed", type=int, default=1, help="seed for --generate-split (default 1)")
    p.add_argument("--workers", type=int, default=8, help="threads that open images during verification")
    p.add_argument("--quiet", action="store_true", help="no download progress")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    names = list(SOURCES) if args.name == "all" else [args.name]
    failed = []
    if args.name != "all" and args.name in SOURCES:
        expected = {r.filename for r in SOURCES[args.name].files}
        unknown = [a for a in args.archive if osp.isfile(a) and osp.basename(a) not in expected]
        if unknown:
            print(f"error: --archive {', '.join(unknown)}: {args.name} expects files named {', '.join(sorted(expected))} "
                  "(rename the file, or pass its folder)", file=sys.stderr)
            return 2
    for name in names:
        try:
            if args.check:
                path = ensure_dataset(name, args.root)
                print(f"{name}: ok ({path})")
            else:
                prepare(
                    name, args.root, mirror=args.mirror, archives=args.archive, verify_only=args.verify_only,
                    force=args.force, keep_archives=args.keep_archives, generate_split=args.generate_split,
                    seed=args.seed, workers=args.workers, quiet=args.quiet,
                )
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(name)
    if len(names) > 1:
        failures = f"; failed: {', '.join(failed)}" if failed else ""
        print(f"{len(names) - len(failed)} of {len(names)} datasets ready{failures}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
