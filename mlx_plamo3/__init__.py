"""mlx-plamo3: PLaMo 3 in MLX, the library every stage shares.

Exports load lazily so that light modules (paths, io) and `mlx-plamo --help` do not import MLX.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "load": "mlx_plamo3.loading",
    "load_model": "mlx_plamo3.loading",
    "Model": "mlx_plamo3.model",
    "ModelArgs": "mlx_plamo3.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlx_plamo3' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
