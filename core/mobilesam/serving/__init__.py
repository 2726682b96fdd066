"""What the front-ends (napari plugin, Label Studio backend) share about serving a model.

- `model_identity(...)`: one string that identifies a model (type, weights, input size), used to
  key every cache of embeddings and exported models.
"""

from .identity import model_identity

__all__ = ["model_identity"]
