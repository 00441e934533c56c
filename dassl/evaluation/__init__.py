"""Evaluators (``build_evaluator``, ``EVALUATOR_REGISTRY``, ``EvaluatorBase``, ``Classification``)."""
from .build import EVALUATOR_REGISTRY, build_evaluator  # noqa: F401
from .evaluator import Classification, EvaluatorBase  # noqa: F401
