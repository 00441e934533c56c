"""EuroSAT (Helber et al.): 27,000 Sentinel-2 RGB patches of 10 land-use classes, in ``eurosat/2750/<Class>/``.

Class names are CoOp's readable ones (:data:`NEW_CNAMES`), e.g. ``AnnualCrop`` -> ``Annual Crop Land``.
"""
from dassl.data.datasets import DATASET_REGISTRY, Datum

from .splits import FolderSplitDataset

#: Folder name -> class name used in prompts (CoOp's table).
NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(FolderSplitDataset):
    dataset_dir = "eurosat"
    image_subdir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    config_name = "eurosat"
    full_num_classes = 10
    new_cnames = NEW_CNAMES

    def update_classname(self, dataset_old):
        """Return copies of ``dataset_old``'s items with their class names mapped through :data:`NEW_CNAMES`."""
        return [
            Datum(impath=item.impath, label=item.label, classname=NEW_CNAMES[item.classname])
            for item in dataset_old
        ]
