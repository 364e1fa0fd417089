"""The one error the evaluation raises: its inputs cannot be used (the message says why)."""

from __future__ import annotations

from splitserve.errors import SplitserveError


class EvaluationInputError(SplitserveError):
    """A capture directory, ground-truth file, weight list or gateway answer that cannot be used.

    Problems with single records are not errors: they are counted and reported.
    """
