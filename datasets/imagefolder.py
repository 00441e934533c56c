"""``python -m datasets.imagefolder FOLDER --name NAME --root DATA``: see :mod:`datasets.imagefolder_dataset`.

The command line lives in this module, the dataset classes in ``imagefolder_dataset`` (imported by the
``datasets`` package), so that running this module does not import it twice.
"""
import sys

from .imagefolder_dataset import (  # noqa: F401  (the public names, for ``from datasets.imagefolder import ...``)
    CONFIG_DIR,
    IMAGE_EXTENSIONS,
    ImageFolderDataset,
    draw_split,
    main,
    make_imagefolder,
    read_classnames,
    register_imagefolder,
)

if __name__ == "__main__":
    sys.exit(main())
