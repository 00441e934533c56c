"""Training engine: the trainer registry and the trainer base classes."""
from .build import TRAINER_REGISTRY, build_trainer  # noqa: F401
from .trainer import SimpleNet, SimpleTrainer, TrainerBase, TrainerX, TrainerXU  # noqa: F401
from .run_result import write_run_result  # noqa: F401
