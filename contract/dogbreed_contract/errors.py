"""The typed refusals of the contract: each message says what was wrong and what to do."""


class ContractError(Exception):
    """Input that breaks the agreement between the images (a user can fix it)."""


class ModelCardError(ContractError):
    """model.json is missing, unreadable, or lacks what the server needs."""


class SchemaVersionError(ModelCardError):
    """model.json was written by a dogbreed-train with another model-card schema."""


class LayoutError(ContractError):
    """A data channel is not laid out as class folders of JPEG/PNG images."""


class ImageError(ContractError, ValueError):
    """An image file preprocessing cannot read (a ValueError, as Pillow callers expect)."""


class ImageTooLarge(ImageError):
    """More pixels than preprocess.MAX_PIXELS: refused before decoding."""


class UnreadableImage(ImageError):
    """Not a JPEG/PNG Pillow can open, or its data is corrupt or truncated."""


class DecodeStopped(Exception):
    """Raised by a caller's ``check`` (preprocess.load_rgb) to end a decode early, as
    serving's deadline does: preprocess lets it through, never as an ImageError."""
