"""splitserve: a self-hosted, SageMaker-compatible inference gateway for production variants.

The public names come from the compiled router (`splitserve._router`), loaded on first use rather
than at import: `splitserve evaluate`, `splitserve.config` and `splitserve.errors` import this
package too and must work where the Rust extension was never built (tests/test_architecture.py).
`feedback` (send labels to a running gateway, `splitserve.online.client`) loads on first use too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitserve._router import Router, VariantSpec, __version__
    from splitserve.online.client import feedback

__all__ = ["Router", "VariantSpec", "__version__", "feedback"]


def __getattr__(name: str) -> Any:
    """Load `Router`, `VariantSpec` and `__version__` from the extension, and `feedback` from
    `splitserve.online.client`, when first asked for.

    Raises:
        AttributeError: any other name.
        ImportError: the extension is not built (`make build`).
    """
    if name not in __all__:
        raise AttributeError(f"module 'splitserve' has no attribute {name!r}")
    source = "splitserve.online.client" if name == "feedback" else "splitserve._router"
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later lookups find it without calling this again
    return value


def __dir__() -> list[str]:
    """The module's names, the lazily loaded ones included."""
    return sorted({*globals(), *__all__})
