"""Shared machinery of the CoOp-format datasets: split files, fall-back splits, few-shot caches, base/new classes.

Everything here keeps the semantics of the CoOp repositories' dataset helpers (``OxfordPets.read_split`` and
friends, see ``reference/dassl-api.md`` section 6.8), so split files and few-shot caches written by those
repositories load here and the reverse:

* :func:`read_split` / :func:`save_split`: ``split_zhou_<Name>.json`` files, ``{"train"|"val"|"test": [[relpath,
  label, classname], ...]}``.
* :func:`split_trainval` and :func:`read_and_split_data`: the random fall-back splits (80/20 of trainval; 50/20/30
  per class folder), drawn from Python's global ``random`` as in the reference.
* :func:`fewshot_with_cache`: ``split_fewshot/shot_{K}-seed_{S}.pkl``, pickles of ``{"train": [Datum], "val":
  [Datum]}`` (ImageNet: ``{"train"}`` only).
* :func:`subsample_classes`: the base-to-new protocol; the first ``ceil(n/2)`` labels are "base", the rest
  "new", each relabelled from 0.

Differences from the reference, all on paths where the reference crashes late or goes silently wrong:

* A missing dataset folder, split file or image is a :class:`~dassl.utils.UserError` that names the path and the
  ``python -m datasets.prepare`` command that fixes it. A dataset whose split file is missing does **not**
  silently draw a new random split (its numbers would not be comparable to published ones); generate one on
  purpose with ``python -m datasets.prepare NAME --root DATA --generate-split``.
* :func:`read_and_split_data` lists each class folder in sorted order (the reference takes the file system's
  order, so its split differs from machine to machine) and skips files that are not images, with a warning.
* Few-shot caches and ``split_zhou`` files are written atomically (``dassl.utils.atomic_write``: a temporary
  file synced to the disk, then renamed), so an interrupted run never leaves a truncated file behind. A cache whose images moved (it stores absolute paths)
  is re-rooted onto the current dataset folder; one whose classes do not match the split is refused.
* When the dataset folder is read-only, the few-shot split is drawn as usual and not cached (a warning says so).
"""
import json
import math
import os
import os.path as osp
import pickle
import random
import warnings
from collections import defaultdict

from dassl.data.datasets import DatasetBase, Datum
from dassl.utils import listdir_nohidden

try:
    from dassl.utils import atomic_write  # fsync'd temporary file, then rename
except ImportError:  # the real Dassl.pytorch has no atomic_write: there the files are written in place
    def atomic_write(path, write, binary=False):
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        with open(path, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)

from .errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SplitDataset",
    "FolderSplitDataset",
    "TrainvalTestDataset",
    "read_split",
    "read_split_entries",
    "save_split",
    "split_trainval",
    "read_and_split_data",
    "subsample_classes",
    "fewshot_with_cache",
    "reroot_items",
    "list_images",
    "read_lines",
    "to_datums",
    "missing_files_message",
    "atomic_write",
    "prepare_command",
]

#: File extensions (lower case) counted as images when a folder is listed.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

SUBSAMPLE_CHOICES = ("all", "base", "new")


# --------------------------------------------------------------------------------------------------------------
# Small helpers: messages and atomic files
# --------------------------------------------------------------------------------------------------------------
def prepare_command(config_name, root, *flags):
    """The shell command that downloads/verifies a dataset, e.g. ``python -m datasets.prepare eurosat --root R``."""
    return " ".join(["python -m datasets.prepare", config_name or "<name>", "--root", str(root), *flags])


def missing_files_message(paths, limit=10):
    """``"a, b, c (and N more)"`` on separate indented lines: the first ``limit`` paths and a count of the rest."""
    shown = [f"  {p}" for p in paths[:limit]]
    if len(paths) > limit:
        shown.append(f"  ... and {len(paths) - limit} more")
    return "\n".join(shown)


def _write_json(obj, path):
    # Same format as dassl.utils.write_json (and the reference's split files): indent 4, ", " / ": ".
    atomic_write(path, lambda f: json.dump(obj, f, indent=4, separators=(",", ": ")))


class _DatumUnpickler(pickle.Unpickler):
    """Unpickles only what Dassl's caches hold: containers of ``Datum`` and plain values. Any other class or
    function named in the file (which a plain ``pickle.load`` would import and call) is refused, so a tampered or
    foreign file cannot run code."""

    ALLOWED = {
        ("dassl.data.datasets.base_dataset", "Datum"),
        ("collections", "OrderedDict"),
        ("copyreg", "_reconstructor"),  # instances pickled with protocol 0/1
        ("builtins", "object"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a dataset cache never holds")


def load_datum_pickle(path, what, fix):
    """Read a Dassl dataset cache (a pickle of ``Datum`` lists) with :class:`_DatumUnpickler`.

    Any problem -- empty, truncated, corrupt, another format, foreign objects -- is one :class:`UserError`
    naming ``path``, ``what`` it is and ``fix`` (what to do).
    """
    try:
        if osp.getsize(path) == 0:
            raise UserError(f"the {what} {path} is empty; {fix}")
        with open(path, "rb") as f:
            return _DatumUnpickler(f).load()
    except UserError:
        raise
    except pickle.UnpicklingError as err:
        raise UserError(f"cannot read the {what} {path}: {_short(err)}; {fix}") from None
    except (EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, OSError, MemoryError,
            ArithmeticError, RecursionError) as err:  # random bytes can decode as a huge length (OverflowError)
        raise UserError(f"cannot read the {what} {path}: it is truncated or not a pickle of Datum lists "
                        f"({type(err).__name__}); {fix}") from None


def _short(err):
    text = str(err).strip() or type(err).__name__
    return text if len(text) < 160 else text[:157] + "..."


def _pickle(obj, path):
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL), binary=True)


# --------------------------------------------------------------------------------------------------------------
# Split files
# --------------------------------------------------------------------------------------------------------------
def read_split_entries(filepath, path_prefix):
    """Read a ``split_zhou`` file without touching the images: ``{"train"|"val"|"test": [(impath, label, cname)]}``.

    ``impath`` is ``path_prefix/relpath``. Raises :class:`UserError` when the file is missing, is not JSON or
    does not have the expected shape.
    """
    if not osp.isfile(filepath):
        raise UserError(f"split file not found: {filepath}")
    try:
        with open(filepath, "r") as f:
            split = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"split file {filepath} is not valid JSON ({err}); delete it and download it again") from None
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val", "test")):
        raise UserError(f'split file {filepath} must be a JSON object with "train", "val" and "test" lists; '
                        "delete it and download it again")
    out = {}
    for key in ("train", "val", "test"):
        entries = []
        for i, entry in enumerate(split[key]):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)):
                raise UserError(f'split file {filepath}: "{key}"[{i}] is {entry!r}, expected [relpath, label, '
                                "classname]; delete it and download it again")
            relpath, label, classname = entry
            try:
                label = int(label)
            except (TypeError, ValueError):
                raise UserError(f'split file {filepath}: "{key}"[{i}] has the label {label!r}, not a number; '
                                "delete it and download it again") from None
            entries.append((osp.join(path_prefix, relpath), label, classname))
        out[key] = entries
    return out


def to_datums(entries, source, hint=""):
    """Turn ``(impath, label, classname)`` tuples into :class:`Datum`; every missing image is reported at once.

    ``source`` names where the entries came from (a split file, a folder) for the error message; ``hint`` is
    appended to it (typically the preparation command).
    """
    missing = [impath for impath, _, _ in entries if not osp.isfile(impath)]
    if missing:
        raise UserError(
            f"{len(missing)} of the {len(entries)} images named in {source} are missing:\n"
            f"{missing_files_message(missing)}\n{hint}".rstrip()
        )
    return [Datum(impath=impath, label=label, classname=classname) for impath, label, classname in entries]


def read_split(filepath, path_prefix):
    """Read a ``split_zhou`` file into ``(train, val, test)`` lists of :class:`Datum` (CoOp's ``read_split``)."""
    entries = read_split_entries(filepath, path_prefix)
    print(f"Reading split from {filepath}")
    hint = f"Check that the dataset was fully extracted under {path_prefix}."
    return tuple(to_datums(entries[key], filepath, hint) for key in ("train", "val", "test"))


def save_split(train, val, test, filepath, path_prefix):
    """Write ``(train, val, test)`` as a ``split_zhou`` file with paths relative to ``path_prefix`` (atomic)."""

    def _extract(items):
        out = []
        for item in items:
            impath = item.impath
            if impath.startswith(path_prefix):
                impath = impath[len(path_prefix):]
            else:  # the reference removes the prefix wherever it occurs
                impath = impath.replace(path_prefix, "")
            if impath.startswith("/"):
                impath = impath[1:]
            out.append((impath, item.label, item.classname))
        return out

    split = {"train": _extract(train), "val": _extract(val), "test": _extract(test)}
    _write_json(split, filepath)
    print(f"Saved split to {filepath}")


def split_trainval(trainval, p_val=0.2):
    """Split ``trainval`` per class into train and val (``round(n * p_val)`` val items per class, shuffled)."""
    p_trn = 1 - p_val
    print(f"Splitting trainval into {p_trn:.0%} train and {p_val:.0%} val")
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)

    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise UserError(
                f"class {label} ({trainval[idxs[0]].classname!r}) has {len(idxs)} trainval image(s): too few for a "
                f"{p_val:.0%} validation split"
            )
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_lines(path):
    """The non-empty lines of a text file, stripped."""
    with open(path, "r") as f:
        return [line.strip() for line in f if line.strip()]


def list_images(folder):
    """Sorted image file names in ``folder`` (hidden files skipped; other non-image files skipped with a warning)."""
    names = sorted(listdir_nohidden(folder))
    images = [n for n in names if osp.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    skipped = [n for n in names if n not in images and osp.isfile(osp.join(folder, n))]
    if skipped:
        warnings.warn(f"{folder}: skipped {len(skipped)} file(s) that are not images: {', '.join(skipped[:5])}")
    return images


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=None, new_cnames=None, rng=None):
    """Split every class folder of ``image_dir`` into train/val/test (50/20/30 by default), as CoOp's DTD does.

    Classes are the sorted folder names minus ``ignored``; ``label`` is the index in that list and the class name
    is ``new_cnames[folder]`` when given (a dict, or a callable of the folder name), else the folder name. Each
    folder's images (sorted, then shuffled with ``rng``, by default Python's global ``random``) give
    ``round(n * p_trn)`` train and ``round(n * p_val)`` val images; the rest are test. Raises
    :class:`UserError` when a class ends up with an empty part.
    """
    rng = rng or random
    ignored = ignored or []
    if not osp.isdir(image_dir):
        raise UserError(f"image folder not found: {image_dir}")
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored and osp.isdir(osp.join(image_dir, c)))
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")

    def _collate(ims, y, c):
        return [Datum(impath=im, label=y, classname=c) for im in ims]

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        images = [osp.join(category_dir, im) for im in list_images(category_dir)]
        rng.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if not (n_train > 0 and n_val > 0 and n_test > 0):
            raise UserError(
                f"{category_dir} has {n_total} image(s): too few for a {p_trn:.0%}/{p_val:.0%}/{p_tst:.0%} "
                f"split (it gives {n_train}/{n_val}/{n_test})"
            )
        if callable(new_cnames):
            category = new_cnames(category)
        elif new_cnames is not None and category in new_cnames:
            category = new_cnames[category]
        train.extend(_collate(images[:n_train], label, category))
        val.extend(_collate(images[n_train:n_train + n_val], label, category))
        test.extend(_collate(images[n_train + n_val:], label, category))
    return train, val, test


# --------------------------------------------------------------------------------------------------------------
# Base-to-new classes
# --------------------------------------------------------------------------------------------------------------
def subsample_classes(*args, subsample="all"):
    """Keep the base (first ``ceil(n/2)`` labels of ``args[0]``) or new (the rest) classes, relabelled from 0.

    ``"all"`` returns ``args`` unchanged (a tuple); otherwise a list of filtered copies of every dataset in
    ``args``, with new :class:`Datum` objects (class names unchanged). Prints ``SUBSAMPLE BASE|NEW CLASSES!``.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise UserError(f"DATASET.SUBSAMPLE_CLASSES must be one of {list(SUBSAMPLE_CHOICES)}, got {subsample!r}")
    if subsample == "all":
        return args

    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}

    output = []
    for dataset in args:
        output.append(
            [
                Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
                for item in dataset
                if item.label in relabeler
            ]
        )
    return output


# --------------------------------------------------------------------------------------------------------------
# Few-shot splits and their cache
# --------------------------------------------------------------------------------------------------------------
def reroot_items(items, dataset_dir, cache_path, sample=None):
    """Return ``items`` with every image path made to exist, moving paths onto ``dataset_dir`` when needed.

    Caches store absolute paths; when the dataset moved (another DATASET.ROOT), the part after the dataset's
    folder name is joined to the current folder. Paths that exist neither way are an error. With ``sample``,
    only about that many evenly spaced items are checked first (for very large caches); all are re-rooted
    if any of them is missing.
    """
    step = max(1, len(items) // sample) if sample else 1
    if all(osp.isfile(item.impath) for item in items[::step]):
        return items
    marker = osp.sep + osp.basename(dataset_dir) + osp.sep
    out, missing = [], []
    for item in items:
        impath = item.impath
        if not osp.isfile(impath) and marker in impath:
            impath = osp.join(dataset_dir, impath.rsplit(marker, 1)[1])
        if not osp.isfile(impath):
            missing.append(item.impath)
            continue
        out.append(item if impath == item.impath else Datum(impath, item.label, item.domain, item.classname))
    if missing:
        raise UserError(
            f"{cache_path} refers to {len(missing)} image(s) that exist neither there nor under {dataset_dir}:\n"
            f"{missing_files_message(missing)}\nDelete the cache file; it is rebuilt on the next run."
        )
    print(f"Note: {cache_path} was written for another dataset location; its paths were mapped to {dataset_dir}")
    return out


def _check_cache_classes(items, lab2cname, cache_path):
    for item in items:
        if lab2cname.get(item.label) != item.classname:
            raise UserError(
                f"{cache_path} does not match the current split: its label {item.label} is "
                f"{item.classname!r}, the split says {lab2cname.get(item.label)!r}. The cache was made from another "
                "split file or class list; delete it (it is rebuilt on the next run)."
            )


def fewshot_with_cache(dataset, train, val, num_shots, seed, cache_dir, with_val=True):
    """Draw (or load) the ``num_shots``-shot train split and the ``min(num_shots, 4)``-shot val split.

    The draw is ``dataset.generate_fewshot_dataset`` (Python's global ``random``); the result is cached in
    ``cache_dir/shot_{num_shots}-seed_{seed}.pkl`` and reused when present, as in CoOp. ``with_val=False``
    (ImageNet) samples and caches the train split only and returns ``val`` unchanged.

    Returns ``(train, val)``.
    """
    dataset_dir = osp.dirname(osp.normpath(cache_dir))
    cache_path = osp.join(cache_dir, f"shot_{num_shots}-seed_{seed}.pkl")
    lab2cname = {item.label: item.classname for item in train}
    if osp.exists(cache_path):
        print(f"Loading preprocessed few-shot data from {cache_path}")
        data = load_datum_pickle(cache_path, "few-shot cache", "delete it to rebuild it")
        keys = ("train", "val") if with_val else ("train",)
        if not isinstance(data, dict) or any(k not in data for k in keys):
            raise UserError(f"{cache_path} is not a few-shot cache with keys {list(keys)}; delete it to rebuild it")
        for key in keys:
            data[key] = reroot_items(data[key], dataset_dir, cache_path)
            _check_cache_classes(data[key], lab2cname, cache_path)
        return data["train"], (data["val"] if with_val else val)

    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    data = {"train": train}
    if with_val:
        val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        data["val"] = val
    print(f"Saving preprocessed few-shot data to {cache_path}")
    try:
        _pickle(data, cache_path)
    except OSError as err:
        warnings.warn(f"could not write the few-shot cache {cache_path} ({err}); continuing without it")
    return train, val


# --------------------------------------------------------------------------------------------------------------
# The common dataset class
# --------------------------------------------------------------------------------------------------------------
class SplitDataset(DatasetBase):
    """CoOp's dataset recipe: read the split, draw few-shot subsets, keep base/new classes.

    A subclass sets the class attributes below and, when its split does not come from a ``split_zhou`` file,
    overrides :meth:`image_entries`. :meth:`image_entries` is also what ``python -m datasets.prepare`` verifies.

    Class attributes:
        dataset_dir: folder under ``DATASET.ROOT`` (replaced on the instance by the absolute path, as in CoOp).
        image_subdir: folder of the images inside ``dataset_dir`` (``self.image_dir`` on the instance).
        split_file: name of the split file in ``dataset_dir`` (``None``: the class reads other files).
        split_relative_to: ``"image_dir"`` or ``"dataset_dir"``: what the split file's paths are relative to.
        config_name: the ``configs/datasets/<config_name>.yaml`` / ``datasets.prepare`` name.
        full_num_classes: number of classes of the real dataset (documentation, tests, class-count checks).
    """

    dataset_dir = ""
    image_subdir = ""
    split_file = None
    split_relative_to = "image_dir"
    config_name = ""
    full_num_classes = 0

    def __init__(self, cfg):
        self._set_paths(cfg.DATASET.ROOT)
        train, val, test = self.read_splits()

        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            train, val = fewshot_with_cache(self, train, val, num_shots, cfg.SEED, self.split_fewshot_dir)

        train, val, test = subsample_classes(train, val, test, subsample=subsample_setting(cfg))
        super().__init__(train_x=train, val=val, test=test)

    # ---- paths -----------------------------------------------------------------------------------------------
    def _set_paths(self, root):
        root = osp.abspath(osp.expanduser(root))
        cls = type(self)
        self.root = root
        self.dataset_dir = osp.join(root, cls.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, cls.image_subdir)
        self.split_path = osp.join(self.dataset_dir, cls.split_file) if cls.split_file else None
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        cls.require_dir(self.dataset_dir, root)
        cls.require_dir(self.image_dir, root)

    @classmethod
    def require_dir(cls, path, root):
        """Raise :class:`UserError` (what is missing, and the command that fetches it) unless ``path`` is a folder."""
        if not osp.isdir(path):
            raise UserError(
                f"{cls.__name__}: folder not found: {path}\n"
                f"Set DATASET.ROOT (--root) to the folder that contains {cls.dataset_dir}/, or download and "
                f"check the dataset with: {prepare_command(cls.config_name, root)}\n"
                "DATASETS.md describes the expected layout."
            )

    @classmethod
    def split_prefix(cls, dataset_dir):
        """The folder the split file's relative paths start from."""
        if cls.split_relative_to == "dataset_dir":
            return dataset_dir
        return osp.join(dataset_dir, cls.image_subdir)

    # ---- reading ---------------------------------------------------------------------------------------------
    def read_splits(self):
        """Return ``(train, val, test)`` lists of :class:`Datum` for the whole dataset (all classes, all shots)."""
        if self.split_path is not None and not osp.isfile(self.split_path):
            return self.split_file_missing()
        entries = self.image_entries(self.dataset_dir)
        if self.split_path is not None:
            print(f"Reading split from {self.split_path}")
        source = self.split_path or self.dataset_dir
        hint = f"Check the dataset with: {prepare_command(self.config_name, self.root, '--verify-only')}"
        return tuple(to_datums(entries[key], source, hint) for key in ("train", "val", "test"))

    def split_file_missing(self):
        """Called when ``split_file`` is absent. Default: a :class:`UserError` saying how to get it."""
        cls = type(self)
        raise UserError(
            f"{cls.__name__}: split file not found: {self.split_path}\n"
            f"Download it with: {prepare_command(cls.config_name, self.root)}\n"
            "(or, to draw a new random split instead of the published one, whose results are then not comparable "
            f"to papers: {prepare_command(cls.config_name, self.root, '--generate-split')})"
        )

    @classmethod
    def image_entries(cls, dataset_dir):
        """``{"train"|"val"|"test": [(impath, label, classname)]}`` as named by the split, without opening images."""
        return read_split_entries(osp.join(dataset_dir, cls.split_file), cls.split_prefix(dataset_dir))

    @classmethod
    def required_files(cls):
        """Files (relative to ``dataset_dir``) that must exist besides the images."""
        return [cls.split_file] if cls.split_file else []

    @classmethod
    def generate_split(cls, dataset_dir):
        """Draw a new random split from the raw annotations (the reference's fall-back); ``(train, val, test)``.

        Uses Python's global ``random``; ``python -m datasets.prepare NAME --generate-split`` seeds it and
        saves the result as ``split_file``.
        """
        raise NotImplementedError(f"{cls.__name__} has no fall-back split")

    # ---- CoOp compatibility: OxfordPets.read_split etc. are static methods in the reference --------------------
    read_split = staticmethod(read_split)
    save_split = staticmethod(save_split)
    split_trainval = staticmethod(split_trainval)
    subsample_classes = staticmethod(subsample_classes)
    read_and_split_data = staticmethod(read_and_split_data)


class TrainvalTestDataset(SplitDataset):
    """A dataset that ships trainval and test lists; its fall-back split takes 20% of trainval per class as val.

    Subclasses implement :meth:`read_trainval_test`.
    """

    @classmethod
    def read_trainval_test(cls, dataset_dir):
        """``(trainval, test)`` lists of :class:`Datum` from the dataset's own annotation files."""
        raise NotImplementedError

    @classmethod
    def generate_split(cls, dataset_dir):
        trainval, test = cls.read_trainval_test(dataset_dir)
        train, val = split_trainval(trainval)
        return train, val, test


class FolderSplitDataset(SplitDataset):
    """A dataset with one image folder per class; its fall-back split is :func:`read_and_split_data` (50/20/30).

    Class attributes ``ignored_folders`` (folders that are not classes) and ``new_cnames`` (folder -> class name)
    are passed to it.
    """

    ignored_folders = ()
    new_cnames = None

    @classmethod
    def generate_split(cls, dataset_dir):
        return read_and_split_data(
            cls.split_prefix(dataset_dir), ignored=list(cls.ignored_folders), new_cnames=cls.new_cnames
        )


def subsample_setting(cfg):
    """``cfg.DATASET.SUBSAMPLE_CLASSES`` (a key the trainers' ``extend_cfg`` adds); ``"all"`` when absent."""
    return cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
