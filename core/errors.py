"""Typed errors raised at the core's boundaries, each with a message a person can act on."""


class FaceVerifyError(Exception):
    """Base class: every error the core raises on purpose."""

    code = "error"


class ImageError(FaceVerifyError):
    """The bytes are not a photo we can use (corrupt, not an image, too big, too small)."""

    code = "bad_image"

    def __init__(self, message: str, code: str | None = None, *, key: str | None = None, **params):
        super().__init__(message)
        if code:
            self.code = code
        # The message's catalog key and values, so a page can say it in its own language.
        self.key, self.params = key, params


class ModelError(FaceVerifyError):
    """A model version is missing or unreadable."""

    code = "model_error"
