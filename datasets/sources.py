"""Where each dataset's files come from and where they go: the one table ``python -m datasets.prepare`` reads.

Each :class:`Remote` is one file to fetch: an archive (``members`` says which of its top-level folders end up
where) or a plain file (a split file, a ``.mat``). ``dest`` is relative to the data root (``--root``).

``origin`` marks where a URL was taken from:

* ``"notes"``: the project's reference notes (the CoOp repository's DATASETS.md and the split files' Google Drive
  ids listed there);
* ``"well-known"``: NOT in the notes; the dataset authors' public URL as widely used. These are the ones to
  check first when a download fails:

  ======================  ===========================================================================
  file                    why it is marked
  ======================  ===========================================================================
  Caltech101 archive      the notes give the host and file name only; full path is CoOp's old one
  food-101.tar.gz         the notes give the dataset page, not the archive
  imagenetv2 archive      the notes give the bucket and file name only
  imagenet-a.tar          the notes point at the authors' GitHub repository
  imagenet-r.tar          the notes point at the authors' GitHub repository
  Caltech256 archive      Caltech256 is not in the notes' list of sources
  ======================  ===========================================================================

Many of these hosts have moved or gone (Stanford Cars and SUN397 especially); ``--mirror URL`` (a folder that
serves the same file names) and ``--archive PATH`` (files you downloaded yourself) replace them.
"""
from dataclasses import dataclass, field

__all__ = ["Remote", "Source", "SOURCES", "IMAGENET_CLASSNAMES_GDRIVE_ID", "get_source"]

IMAGENET_CLASSNAMES_GDRIVE_ID = "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"

_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_CARS = "http://ai.stanford.edu/~jkrause"
_SUN = "http://vision.princeton.edu/projects/2010/SUN"


@dataclass(frozen=True)
class Remote:
    """One downloadable file.

    Attributes:
        filename: its file name; also the name looked up on a ``--mirror`` and among ``--archive`` files.
        dest: where it ends up, relative to the data root: the file's path for a plain file, else the folder
            (see ``members``).
        url: public URL, or ``None``.
        gdrive_id: Google Drive file id (fetched with ``gdown``), or ``None``.
        members: for an archive, candidate paths inside it (after extraction) whose content becomes ``dest``;
            the first that exists is used; ``"."`` means the whole archive. Empty for a plain file.
        required: ``False`` for files only the fall-back split needs (a failed download is then a warning).
        copy_from: a path under the root to copy instead of downloading, when it exists (the ImageNet
            variants' ``classnames.txt``).
        marker: a path under the root whose existence means the file is already in place (default ``dest``;
            set when ``dest`` is a folder that other files also go into).
        origin: ``"notes"`` or ``"well-known"`` (see the module docstring).
    """

    filename: str
    dest: str
    url: str = None
    gdrive_id: str = None
    members: tuple = ()
    required: bool = True
    copy_from: str = None
    marker: str = None
    origin: str = "notes"

    @property
    def is_archive(self):
        return bool(self.members)

    @property
    def present_if(self):
        """The path (relative to the root) that exists once this file is in place."""
        return self.marker or self.dest


@dataclass(frozen=True)
class Source:
    """Everything needed to fetch one dataset.

    ``manual`` is set when some files have no public download: the text tells the user what to get and where to
    put it; the remotes without a URL or Drive id are then looked up only on ``--mirror`` / ``--archive``.
    """

    name: str
    files: tuple = field(default_factory=tuple)
    manual: str = None


def _split(dataset_dir, filename, gdrive_id):
    return Remote(filename=filename, dest=f"{dataset_dir}/{filename}", gdrive_id=gdrive_id)


def _archive(filename, dest, url, member, **kw):
    return Remote(filename=filename, dest=dest, url=url, members=(member,), **kw)


def _classnames(dataset_dir):
    return Remote(
        filename="classnames.txt",
        dest=f"{dataset_dir}/classnames.txt",
        gdrive_id=IMAGENET_CLASSNAMES_GDRIVE_ID,
        copy_from="imagenet/classnames.txt",
    )


SOURCES = {
    s.name: s
    for s in [
        Source(
            "imagenet",
            files=(_classnames("imagenet"),),
            manual=(
                "ImageNet (ILSVRC-2012) has no public download: register at https://image-net.org, download\n"
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, and arrange them as\n"
                "  {root}/imagenet/images/train/<wnid>/*.JPEG  (1,000 folders such as n01440764; 1,281,167 images;\n"
                "                                              the train tar holds one tar per class: extract each\n"
                "                                              into its own <wnid> folder)\n"
                "  {root}/imagenet/images/val/<wnid>/*.JPEG    (the 50,000 validation images sorted into the same\n"
                "                                              1,000 folders, e.g. with the widely used valprep.sh)\n"
                "  {root}/imagenet/classnames.txt              (CoOp's '<wnid> <class name>' list; this command\n"
                "                                              fetches it from Google Drive)\n"
                "then run this command again to verify."
            ),
        ),
        Source(
            "caltech101",
            files=(
                Remote(
                    "101_ObjectCategories.tar.gz",
                    "caltech-101/101_ObjectCategories",
                    url="http://www.vision.caltech.edu/Image_Datasets/Caltech101/101_ObjectCategories.tar.gz",
                    members=("101_ObjectCategories",),
                    origin="well-known",
                ),
                _split("caltech-101", "split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
            ),
        ),
        Source(
            "oxford_pets",
            files=(
                _archive("images.tar.gz", "oxford_pets/images", f"{_VGG}/pets/data/images.tar.gz", "images"),
                Remote(
                    "annotations.tar.gz",
                    "oxford_pets/annotations",
                    url=f"{_VGG}/pets/data/annotations.tar.gz",
                    members=("annotations",),
                    required=False,
                ),
                _split("oxford_pets", "split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
            ),
        ),
        Source(
            "stanford_cars",
            files=(
                _archive("cars_train.tgz", "stanford_cars/cars_train", f"{_CARS}/car196/cars_train.tgz", "cars_train"),
                _archive("cars_test.tgz", "stanford_cars/cars_test", f"{_CARS}/car196/cars_test.tgz", "cars_test"),
                Remote(
                    "cars_test_annos_withlabels.mat",
                    "stanford_cars/cars_test_annos_withlabels.mat",
                    url=f"{_CARS}/car196/cars_test_annos_withlabels.mat",
                    required=False,
                ),
                _archive("car_devkit.tgz", "stanford_cars/devkit", f"{_CARS}/cars/car_devkit.tgz", "devkit", required=False),
                _split("stanford_cars", "split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
            ),
        ),
        Source(
            "oxford_flowers",
            files=(
                _archive("102flowers.tgz", "oxford_flowers/jpg", f"{_VGG}/flowers/102/102flowers.tgz", "jpg"),
                Remote(
                    "imagelabels.mat",
                    "oxford_flowers/imagelabels.mat",
                    url=f"{_VGG}/flowers/102/imagelabels.mat",
                    required=False,
                ),
                Remote(
                    "cat_to_name.json",
                    "oxford_flowers/cat_to_name.json",
                    gdrive_id="1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0",
                    required=False,
                ),
                _split("oxford_flowers", "split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
            ),
        ),
        Source(
            "food101",
            files=(
                Remote(
                    "food-101.tar.gz",
                    "food-101",
                    url="http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                    members=("food-101",),
                    marker="food-101/images",
                    origin="well-known",
                ),
                _split("food-101", "split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
            ),
        ),
        Source(
            "fgvc_aircraft",
            files=(
                Remote(
                    "fgvc-aircraft-2013b.tar.gz",
                    "fgvc_aircraft",
                    url=f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                    members=("fgvc-aircraft-2013b/data",),
                    marker="fgvc_aircraft/images",
                ),
            ),
        ),
        Source(
            "sun397",
            files=(
                Remote("SUN397.tar.gz", "sun397/SUN397", url=f"{_SUN}/SUN397.tar.gz", members=("SUN397",)),
                Remote(
                    "Partitions.zip",
                    "sun397",
                    url=f"{_SUN}/download/Partitions.zip",
                    members=("Partitions", "."),
                    marker="sun397/ClassName.txt",
                    required=False,
                ),
                _split("sun397", "split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
            ),
        ),
        Source(
            "dtd",
            files=(
                Remote(
                    "dtd-r1.0.1.tar.gz",
                    "dtd",
                    url=f"{_VGG}/dtd/download/dtd-r1.0.1.tar.gz",
                    members=("dtd",),
                    marker="dtd/images",
                ),
                _split("dtd", "split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
            ),
        ),
        Source(
            "eurosat",
            files=(
                Remote(
                    "EuroSAT.zip",
                    "eurosat/2750",
                    url="http://madm.dfki.de/files/sentinel/EuroSAT.zip",
                    members=("2750", "EuroSAT_RGB", "EuroSAT/2750"),
                ),
                _split("eurosat", "split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
            ),
        ),
        Source(
            "ucf101",
            files=(
                Remote(
                    "UCF-101-midframes.zip",
                    "ucf101/UCF-101-midframes",
                    gdrive_id="10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O",
                    members=("UCF-101-midframes",),
                ),
                _split("ucf101", "split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
            ),
        ),
        Source(
            "imagenetv2",
            files=(
                Remote(
                    "imagenetv2-matched-frequency.tar.gz",
                    "imagenetv2/imagenetv2-matched-frequency-format-val",
                    url="https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
                    members=("imagenetv2-matched-frequency-format-val",),
                    origin="well-known",
                ),
                _classnames("imagenetv2"),
            ),
        ),
        Source(
            "imagenet_sketch",
            files=(
                Remote("ImageNet-Sketch.zip", "imagenet-sketch/images", members=("sketch", "ImageNet-Sketch/sketch")),
                _classnames("imagenet-sketch"),
            ),
            manual=(
                "ImageNet-Sketch has no stable direct download: get ImageNet-Sketch.zip as its authors' GitHub\n"
                "repository (HaohanWang/ImageNet-Sketch) describes, then run\n"
                "  python -m datasets.prepare imagenet_sketch --root {root} --archive /path/to/ImageNet-Sketch.zip\n"
                "or place the class folders yourself as {root}/imagenet-sketch/images/<wnid>/*.JPEG (1,000 folders)."
            ),
        ),
        Source(
            "imagenet_a",
            files=(
                Remote(
                    "imagenet-a.tar",
                    "imagenet-adversarial/imagenet-a",
                    url="https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
                    members=("imagenet-a",),
                    origin="well-known",
                ),
                _classnames("imagenet-adversarial"),
            ),
        ),
        Source(
            "imagenet_r",
            files=(
                Remote(
                    "imagenet-r.tar",
                    "imagenet-rendition/imagenet-r",
                    url="https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
                    members=("imagenet-r",),
                    origin="well-known",
                ),
                _classnames("imagenet-rendition"),
            ),
        ),
        Source(
            "caltech256",
            files=(
                Remote(
                    "256_ObjectCategories.tar",
                    "caltech-256/256_ObjectCategories",
                    url="http://www.vision.caltech.edu/Image_Datasets/Caltech256/256_ObjectCategories.tar",
                    members=("256_ObjectCategories",),
                    origin="well-known",
                ),
            ),
        ),
    ]
}


def get_source(name):
    """The :class:`Source` of a dataset by its config name (``eurosat``)."""
    return SOURCES[name]
