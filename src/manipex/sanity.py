"""The sanity checks, moved to :mod:`manipex.evaluation.sanity` (issue 27's evaluation floor);
``manipex.sanity`` keeps their names so that code written against it runs unchanged."""
from .evaluation.sanity import *  # noqa: F401,F403
from .evaluation.sanity import __all__  # noqa: F401
