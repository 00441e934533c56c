"""The project's trainers and datasets use only the public API of the real Dassl.pytorch.

So they run on the real Dassl as well as on ours. What the project's engine has beyond it is imported in one place,
``trainers/compat.py``, each name behind a fallback. The allowed names are the import surface of Dassl 0.6.3
that the CoOp family uses (reference/dassl-api.md, section 0); ``UserError`` is ours and may only be imported
behind a fallback for the real Dassl.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PUBLIC = {
    "dassl.config": {"get_cfg_default", "clean_cfg"},
    "dassl.engine": {"build_trainer", "TRAINER_REGISTRY", "TrainerX", "TrainerXU", "TrainerBase", "SimpleTrainer",
                     "SimpleNet"},
    "dassl.metrics": {"compute_accuracy"},
    "dassl.optim": {"build_optimizer", "build_lr_scheduler"},
    "dassl.utils": {"setup_logger", "set_random_seed", "collect_env_info", "load_pretrained_weights",
                    "load_checkpoint", "mkdir_if_missing", "listdir_nohidden", "read_json", "write_json",
                    "check_isfile", "count_num_param", "MetricMeter", "AverageMeter", "Registry", "save_checkpoint",
                    "resume_from_checkpoint", "read_image", "check_availability", "tolist_if_not",
                    "get_most_similar_str_to_a_from_b", "download_url", "Logger", "open_all_layers",
                    "open_specified_layers", "init_network_weights"},
    "dassl.data.datasets": {"DATASET_REGISTRY", "Datum", "DatasetBase", "build_dataset"},
    "dassl.data": {"DatasetWrapper", "DataManager"},
    "dassl.data.transforms": {"build_transform", "INTERPOLATION_MODES"},
}
OURS_WITH_FALLBACK = {"UserError", "distributed", "atomic_write"}  # imported in try/except ImportError, with a stand-in


def dassl_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
        ):
            guarded.update(id(n) for n in ast.walk(node) if isinstance(n, ast.ImportFrom))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dassl":
            for alias in node.names:
                yield node.module, alias.name, id(node) in guarded, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dassl":
                    yield alias.name, None, False, node.lineno


FILES = sorted(p for pkg in ("trainers", "datasets") for p in (REPO / pkg).rglob("*.py"))


#: the one module that may import more than the public API, each import behind a fallback for the real Dassl
COMPAT = REPO / "trainers" / "compat.py"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_only_public_dassl_names(path):
    for module, name, guarded, line in dassl_imports(path):
        where = f"{path.relative_to(REPO)}:{line}"
        if path == COMPAT:
            assert guarded, f"{where} imports {module}.{name} without a fallback for the real Dassl"
            continue
        assert module in PUBLIC, f"{where} imports {module}, which is not public Dassl API"
        if name in OURS_WITH_FALLBACK:
            assert guarded, f"{where} imports {name} without a fallback for the real Dassl"
        else:
            assert name in PUBLIC[module], f"{where} imports {module}.{name}, which the real Dassl does not export"
