"""Utilities of the Dassl-compatible engine: files, logging, meters, registries, checkpoints, errors."""
from .errors import *  # noqa: F401,F403
from .tools import *  # noqa: F401,F403
from .logger import *  # noqa: F401,F403
from .meters import *  # noqa: F401,F403
from .registry import *  # noqa: F401,F403
from .torchtools import *  # noqa: F401,F403
from .run_lock import *  # noqa: F401,F403
