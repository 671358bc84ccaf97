"""mlx-plamo3: PLaMo 3 in MLX, the library every stage shares."""

from mlx_plamo3.loading import load, load_model
from mlx_plamo3.model import Model, ModelArgs

__all__ = ["Model", "ModelArgs", "load", "load_model"]
