"""Datum pickle compatibility and DatasetBase (classes, few-shot sampling) against Dassl 0.6.3's behaviour."""
import pickle
import pickletools
import random
import struct

import pytest

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
from dassl.data.datasets.base_dataset import ImageNotFoundError
from dassl.utils import UserError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def _dassl_datum_pickle(impath, label, domain, classname):
    """The protocol-2 byte stream the original Dassl writes for one Datum, built opcode by opcode.

    GLOBAL 'dassl.data.datasets.base_dataset Datum', EMPTY_TUPLE, NEWOBJ (no __init__ call), then BUILD with the
    instance dict in Dassl's attribute order.
    """

    def unicode(text):
        raw = text.encode("utf-8")
        return b"X" + struct.pack("<I", len(raw)) + raw

    return (
        b"\x80\x02"
        + b"cdassl.data.datasets.base_dataset\nDatum\n"
        + b")\x81"
        + b"}("
        + unicode("_impath") + unicode(impath)
        + unicode("_label") + b"K" + bytes([label])
        + unicode("_domain") + b"K" + bytes([domain])
        + unicode("_classname") + unicode(classname)
        + b"ub."
    )


class _DasslDatum:
    """Stand-in for the original class: reads the four private attributes through properties, as Dassl does."""

    impath = property(lambda self: self._impath)
    label = property(lambda self: self._label)
    domain = property(lambda self: self._domain)
    classname = property(lambda self: self._classname)


class _DasslUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        assert (module, name) == ("dassl.data.datasets.base_dataset", "Datum")
        return _DasslDatum


def test_datum_pickled_by_dassl_loads_without_the_image():
    # The image does not exist here: unpickling must not call __init__ (the original cache holds absolute paths).
    stream = _dassl_datum_pickle("/data/oxford_pets/images/Abyssinian_1.jpg", 3, 0, "abyssinian")
    datum = pickle.loads(stream)
    assert type(datum) is Datum
    assert (datum.impath, datum.label, datum.domain, datum.classname) == (
        "/data/oxford_pets/images/Abyssinian_1.jpg", 3, 0, "abyssinian")

    # A few-shot cache is a dict of lists of Datum written with HIGHEST_PROTOCOL; re-dumping the loaded objects
    # round-trips through the same class.
    cache = pickle.loads(pickle.dumps({"train": [datum], "val": [datum]}, protocol=pickle.HIGHEST_PROTOCOL))
    assert cache["val"][0].classname == "abyssinian"


def test_datum_we_pickle_loads_in_dassl(tmp_path):
    path = _touch(tmp_path / "a.jpg")
    stream = pickle.dumps([Datum(impath=path, label=7, domain=1, classname="cat")], protocol=pickle.HIGHEST_PROTOCOL)
    globals_ = [arg for op, arg, _ in pickletools.genops(stream) if op.name in ("SHORT_BINUNICODE", "GLOBAL")]
    assert globals_[:2] == ["dassl.data.datasets.base_dataset", "Datum"]
    (loaded,) = _DasslUnpickler(__import__("io").BytesIO(stream)).load()
    assert vars(loaded) == {"_impath": path, "_label": 7, "_domain": 1, "_classname": "cat"}
    assert (loaded.impath, loaded.label, loaded.domain, loaded.classname) == (path, 7, 1, "cat")


def test_datum_missing_image_names_the_file(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(ImageNotFoundError, match="nope.jpg") as err:
        Datum(impath=missing)
    assert isinstance(err.value, UserError) and isinstance(err.value, FileNotFoundError)
    with pytest.raises(TypeError, match="impath must be a str"):
        Datum(impath=tmp_path / "a.jpg")


def _items(tmp_path, labels, per_class=4):
    """Items ``<label>_<i>`` listed round-robin: for i, for label in labels (so first appearance = ``labels``)."""
    return [
        Datum(impath=_touch(tmp_path / f"{label}_{i}.jpg"), label=label, classname=f"class{label}")
        for i in range(per_class)
        for label in labels
    ]


def _names(items):
    return [item.impath.rsplit("/", 1)[-1][:-4] for item in items]


def test_classes_come_from_train_x(tmp_path):
    train = _items(tmp_path, [2, 0, 1], per_class=1)
    test = _items(tmp_path / "t", [4], per_class=1)
    ds = DatasetBase(train_x=train, test=test)
    assert ds.num_classes == 3
    assert ds.classnames == ["class0", "class1", "class2"]
    assert ds.lab2cname == {0: "class0", 1: "class1", 2: "class2"}
    assert ds.val is None and ds.train_u is None and ds.test is test
    # max(label) + 1, like Dassl, even with a gap in the labels
    assert DatasetBase.get_num_classes(_items(tmp_path / "g", [0, 5], per_class=1)) == 6
    with pytest.raises(ValueError, match="train_x"):
        DatasetBase(train_x=[], test=test)
    clash = train + [Datum(impath=train[0].impath, label=2, classname="other")]
    with pytest.raises(ValueError, match="label 2 has two class names"):
        DatasetBase(train_x=clash)


# Seed 1 of Python's Mersenne Twister gives these first 32-bit words, written by their top bits:
#   top 3 bits (getrandbits(3)): 1, 4, 6, 6, 6, 0, 2, 0, 3, 6, 3, 3
#   top 2 bits (getrandbits(2)): 0, 2, 3, 3, 3, 0, 1, 0, 1, 3, 1, 1
# random.sample(pool of 4, 2) draws j0 = randbelow(4) (getrandbits(3), retried while >= 4), takes pool[j0] and
# moves pool[3] into slot j0, then j1 = randbelow(3) (getrandbits(2), retried while >= 3) and takes pool[j1].
# Labels first appear in the order 2, 0, 1, so the classes are sampled in that order:
#   class 2: j0 = 1 (word 1)          -> 2_1; pool [2_0, 2_3, 2_2];  j1 = 2 (word 2) -> 2_2
#   class 0: words 3-5 give 6 (> 3), j0 = 0 (word 6) -> 0_0; pool [0_3, 0_1, 0_2]; j1 = 1 (word 7) -> 0_1
#   class 1: j0 = 0 (word 8)          -> 1_0; pool [1_3, 1_1, 1_2];  j1 = 1 (word 9) -> 1_1
SEED1_K2 = ["2_1", "2_2", "0_0", "0_1", "1_0", "1_1"]


def _sample_pool(rng, pool, k):
    """random.sample's small-population algorithm written out from getrandbits, as an independent check."""
    pool, out = list(pool), []
    for i in range(k):
        n = len(pool) - i
        j = rng.getrandbits(n.bit_length())
        while j >= n:
            j = rng.getrandbits(n.bit_length())
        out.append(pool[j])
        pool[j] = pool[len(pool) - i - 1]
    return out


def test_fewshot_seed1_gives_the_documented_items(tmp_path, capsys):
    items = _items(tmp_path, [2, 0, 1])
    ds = DatasetBase(train_x=items)
    random.seed(1)
    shots = ds.generate_fewshot_dataset(items, num_shots=2)
    assert _names(shots) == SEED1_K2
    assert capsys.readouterr().out == "Creating a 2-shot dataset\n"

    rng = random.Random(1)
    by_label = {label: [it for it in items if it.label == label] for label in (2, 0, 1)}
    assert _names(sum((_sample_pool(rng, by_label[label], 2) for label in (2, 0, 1)), [])) == SEED1_K2

    # The same seed gives the same shots again; several sources draw one after the other from the same stream.
    random.seed(1)
    train, val = ds.generate_fewshot_dataset(items, items, num_shots=2)
    assert _names(train) == SEED1_K2 and len(val) == 6 and _names(val) != SEED1_K2


def test_fewshot_small_class_keeps_all_or_repeats(tmp_path):
    items = _items(tmp_path, [2, 0, 1])
    small = Datum(impath=_touch(tmp_path / "3_0.jpg"), label=3, classname="class3")
    data = [small] + items  # label 3 first, with one item
    ds = DatasetBase(train_x=data)

    # Without repeat the small class is kept whole and draws nothing: the others get the seed-1 shots.
    random.seed(1)
    with pytest.warns(UserWarning, match=r"label \(items\): 3 \(1\)"):
        shots = ds.generate_fewshot_dataset(data, num_shots=2)
    assert _names(shots) == ["3_0"] + SEED1_K2

    # With repeat, random.choices(k=2) takes two random() calls (two 32-bit words each, words 1-4), so class 2
    # starts at word 5: j0 = 0 after 6 (word 5) -> 2_0, pool [2_3, 2_1, 2_2]; j1 = 1 (word 7) -> 2_1;
    # class 0: j0 = 0 (word 8) -> 0_0, j1 = 1 (word 9) -> 0_1; class 1: 6 (word 10), j0 = 3 (word 11) -> 1_3,
    # j1 = 1 (word 12) -> 1_1.
    random.seed(1)
    shots = ds.generate_fewshot_dataset(data, num_shots=2, repeat=True)
    assert _names(shots) == ["3_0", "3_0", "2_0", "2_1", "0_0", "0_1", "1_3", "1_1"]


def test_fewshot_passthrough_and_misuse(tmp_path):
    items = _items(tmp_path, [0, 1])
    ds = DatasetBase(train_x=items)
    assert ds.generate_fewshot_dataset(items, num_shots=-1) is items
    assert ds.generate_fewshot_dataset(items, items, num_shots=0) == (items, items)
    with pytest.raises(TypeError, match="num_shots must be an int"):
        ds.generate_fewshot_dataset(items, num_shots=2.0)
    with pytest.raises(TypeError, match="data source 1 is a int"):
        ds.generate_fewshot_dataset(items, 16)  # num_shots passed positionally


def test_split_by_label_and_domain_keep_first_appearance_order(tmp_path):
    items = [
        Datum(impath=_touch(tmp_path / f"{i}.jpg"), label=label, domain=domain)
        for i, (label, domain) in enumerate([(1, 1), (0, 0), (1, 0), (2, 1)])
    ]
    assert list(DatasetBase.split_dataset_by_label(items)) == [1, 0, 2]
    assert [len(v) for v in DatasetBase.split_dataset_by_label(items).values()] == [2, 1, 1]
    assert list(DatasetBase.split_dataset_by_domain(items)) == [1, 0]


def test_check_input_domains():
    class Office(DatasetBase):
        domains = ["amazon", "webcam"]

    ds = Office.__new__(Office)
    ds.check_input_domains(["amazon"], ["webcam"])
    with pytest.raises(ValueError, match="must belong to"):
        ds.check_input_domains(["amazon"], ["dslr"])
    with pytest.raises(ValueError, match="source_domains"):
        ds.check_input_domains([], ["webcam"])


def test_download_data_extracts_a_zip(tmp_path):
    import zipfile

    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("pets/images/a.jpg", b"x")
    dst = tmp_path / "data" / "pets.zip"
    DatasetBase.__new__(DatasetBase).download_data(src.as_uri(), str(dst), from_gdrive=False)
    assert (tmp_path / "data" / "pets" / "images" / "a.jpg").read_bytes() == b"x"


def test_build_dataset_unknown_name_suggests():
    from yacs.config import CfgNode as CN

    # a name close to no other registered dataset (the project registers OxfordPets itself)
    cfg = CN({"DATASET": CN({"NAME": "ZebraFinchesForTst"}), "VERBOSE": True})

    @DATASET_REGISTRY.register()
    class ZebraFinchesForTest(DatasetBase):
        pass

    try:
        with pytest.raises(ValueError, match=r"do you mean \[ZebraFinchesForTest\]"):
            build_dataset(cfg)
    finally:
        DATASET_REGISTRY._obj_map.pop("ZebraFinchesForTest")
