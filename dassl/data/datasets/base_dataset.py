"""Dataset records (:class:`Datum`) and the base class of every dataset (:class:`DatasetBase`).

Compatibility contract (``reference/dassl-api.md`` section 6):

* ``Datum`` lives at ``dassl.data.datasets.base_dataset.Datum`` and keeps exactly four instance attributes,
  ``_impath``, ``_label``, ``_domain`` and ``_classname``. Few-shot caches (``split_fewshot/*.pkl``) and
  ImageNet's ``preprocessed.pkl`` are plain pickles of lists of ``Datum``; unpickling looks the class up by
  that module path and restores the instance ``__dict__`` without calling ``__init__``. So caches written by
  the original Dassl load here, and ours load there. Do not add ``__slots__``, ``__reduce__``,
  ``__getstate__`` or further instance attributes.
* ``DatasetBase.generate_fewshot_dataset`` makes the same calls on Python's global ``random`` in the same
  order as Dassl 0.6.3, so a seed gives the same shots.
"""
import os
import os.path as osp
import random
import tarfile
import warnings
import zipfile
from collections import defaultdict

from dassl.utils.errors import UserError


class ImageNotFoundError(UserError, FileNotFoundError):
    """A dataset names an image file that does not exist (the dataset folder is incomplete or misplaced)."""


class Datum:
    """One labelled image.

    Args:
        impath (str): path of the image file; it must exist.
        label (int): class label.
        domain (int): domain label (0 unless the dataset has several domains).
        classname (str): class name.

    The attributes are read-only properties. Two ``Datum`` compare by identity, as in Dassl.
    """

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(f"Datum: impath must be a str, got {type(impath).__name__} ({impath!r})")
        if not osp.isfile(impath):
            # Dassl asserts here; a missing image is a broken dataset folder or split file, so say which file.
            raise ImageNotFoundError(
                f'Datum: no image file at "{impath}" (check DATASET.ROOT and that the dataset was fully '
                "downloaded and extracted)"
            )
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return (
            f"Datum(impath={self._impath!r}, label={self._label!r}, domain={self._domain!r}, "
            f"classname={self._classname!r})"
        )


class DatasetBase:
    """Holds the splits of a dataset: ``train_x`` (labelled), ``train_u`` (unlabelled), ``val`` and ``test``.

    Each split is a list of :class:`Datum` (or ``None``). ``num_classes``, ``lab2cname`` and ``classnames``
    are derived from ``train_x`` only (``num_classes = max(label) + 1``); a test-only dataset passes its
    test data as ``train_x`` too.
    """

    dataset_dir = ""  # the folder of the dataset under DATASET.ROOT
    domains = []  # domain names (domain adaptation / generalisation datasets only)

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        if not train_x:
            raise ValueError(
                f"{type(self).__name__}: train_x is empty or None; the classes are derived from it "
                "(a test-only dataset passes train_x=<its test data>)"
            )
        self._train_x = train_x  # labeled training data
        self._train_u = train_u  # unlabeled training data (optional)
        self._val = val  # validation data (optional)
        self._test = test  # test data
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        """``max(label) + 1`` over ``data_source`` (so a gap in the labels still counts)."""
        labels = {item.label for item in data_source}
        if not labels:
            raise ValueError("get_num_classes: the data source is empty")
        return max(labels) + 1

    @staticmethod
    def get_lab2cname(data_source):
        """Return ``(mapping, classnames)``: ``{label: classname}`` and the class names in ascending label order.

        A label that appears with two different class names is an error (Dassl would keep an arbitrary one).
        """
        mapping = {}
        for item in data_source:
            known = mapping.setdefault(item.label, item.classname)
            if known != item.classname:
                raise ValueError(
                    f"label {item.label} has two class names, {known!r} and {item.classname!r} "
                    f"(second seen at {item.impath})"
                )
        labels = sorted(mapping)
        mapping = {label: mapping[label] for label in labels}
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains):
        """Check that both domain lists are non-empty and name domains of this dataset (DA/DG datasets)."""
        if len(source_domains) == 0:
            raise ValueError("source_domains (DATASET.SOURCE_DOMAINS) is empty")
        if len(target_domains) == 0:
            raise ValueError("target_domains (DATASET.TARGET_DOMAINS) is empty")
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains):
        for domain in input_domains:
            if domain not in self.domains:
                raise ValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    def download_data(self, url, dst, from_gdrive=True):
        """Download ``url`` to the archive path ``dst`` and extract it beside ``dst``.

        ``from_gdrive=True`` downloads with ``gdown`` (imported only here); otherwise with ``urllib``
        (any URL it supports, including ``file://``). Archives: ``.zip``, ``.tar``, ``.tar.gz``/``.tgz``.
        """
        folder = osp.dirname(dst)
        os.makedirs(folder or ".", exist_ok=True)
        if from_gdrive:
            try:
                import gdown
            except ImportError as err:  # pragma: no cover - gdown is in requirements.txt
                raise ImportError("download_data(from_gdrive=True) needs gdown: pip install gdown") from err
            if gdown.download(url, dst, quiet=False) is None:
                raise RuntimeError(f"gdown could not download {url} to {dst}")
        else:
            import urllib.request

            print(f"Downloading {url} to {dst}")
            urllib.request.urlretrieve(url, dst)

        print("Extracting file ...")
        _extract_archive(dst, folder or ".")
        print(f"File extracted to {folder}")

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """Draw ``num_shots`` items per class from each data source.

        Same draws as Dassl 0.6.3 for the same state of Python's global ``random``: for each source, the
        items are grouped by label in order of first appearance (:meth:`split_dataset_by_label`), and for
        each label in that order:

        * the class has at least ``num_shots`` items: ``random.sample(items, num_shots)``;
        * fewer, and ``repeat``: ``random.choices(items, k=num_shots)`` (with replacement);
        * fewer, and not ``repeat``: all its items are kept, in order, and no random number is drawn.
          The split then has fewer than ``num_shots`` items for that class, as in Dassl; a warning (stderr,
          so log files stay identical to Dassl's) names those classes.

        ``num_shots < 1`` returns the input unchanged. Returns one list for one source, else a list of lists.
        """
        if isinstance(num_shots, bool) or not isinstance(num_shots, int):
            raise TypeError(f"num_shots must be an int, got {num_shots!r} (pass it by keyword: num_shots=K)")
        for i, data_source in enumerate(data_sources):
            if isinstance(data_source, (str, bytes, dict)) or not hasattr(data_source, "__iter__"):
                raise TypeError(
                    f"generate_fewshot_dataset: data source {i} is a {type(data_source).__name__}, not a list "
                    "of Datum (pass num_shots and repeat by keyword)"
                )
        if num_shots < 1:
            if len(data_sources) == 1:
                return data_sources[0]
            return data_sources

        print(f"Creating a {num_shots}-shot dataset")

        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            short = []
            for label, items in tracker.items():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                elif repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
                    short.append(f"{label} ({len(items)})")
                dataset.extend(sampled_items)
            if short:
                warnings.warn(
                    f"{num_shots}-shot sampling: {len(short)} class(es) have fewer items than shots and keep all "
                    f"of them, label (items): {', '.join(short)}",
                    stacklevel=2,
                )
            output.append(dataset)

        if len(output) == 1:
            return output[0]
        return output

    @staticmethod
    def split_dataset_by_label(data_source):
        """Group items by label: a ``defaultdict(list)`` whose key order is the labels' first appearance."""
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source):
        """Group items by domain label, like :meth:`split_dataset_by_label`."""
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output


def _extract_archive(path, folder):
    if path.endswith(".zip"):
        with zipfile.ZipFile(path, "r") as zf:
            zf.extractall(folder)
        return
    for suffix, mode in ((".tar", "r:"), (".tar.gz", "r:gz"), (".tgz", "r:gz")):
        if path.endswith(suffix):
            with tarfile.open(path, mode) as tar:
                if hasattr(tarfile, "data_filter"):  # refuses members that would land outside `folder`
                    tar.extractall(folder, filter="data")
                else:  # pragma: no cover - Python without PEP 706 backports
                    tar.extractall(folder)
            return
    raise ValueError(f"cannot extract {path}: unknown archive type (expected .zip, .tar, .tar.gz or .tgz)")
