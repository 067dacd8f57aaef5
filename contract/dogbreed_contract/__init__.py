"""What the training image, the serving image and the host scripts agree on.

One home for each part of the agreement, installed as a package into both images
and the host venv:

- ``preprocess``: how an image file becomes model input (training's evaluation and
  the endpoint run the same code);
- ``model_card``: ``model.json``, the typed card a training job writes next to
  ``model.onnx`` and the server reads, with a schema version;
- ``media``: the content types the endpoint takes, their magic bytes and file suffixes;
- ``layout``: the class-folder layout of a data channel;
- ``metrics``: the training log's line format (names escaped), its METRIC lines, the
  regexes SageMaker reads them with, and where metrics.json holds the same values.

Every refusal is a ``ContractError`` subclass, so callers catch a type, not a message.
"""

from .errors import ContractError, LayoutError, ModelCardError, SchemaVersionError

__version__ = "1.0.0"
__all__ = ["ContractError", "LayoutError", "ModelCardError", "SchemaVersionError"]
