"""splitserve: a self-hosted, SageMaker-compatible inference gateway for production variants."""

from splitserve._router import Router, VariantSpec, __version__

__all__ = ["Router", "VariantSpec", "__version__"]
