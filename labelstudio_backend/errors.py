"""Errors the backend reports to Label Studio as JSON `{"status": "error", "error": message}`."""

from mobilesam.errors import MobileSamError


class BackendError(MobileSamError):
    """A request the backend cannot answer; `status` is the HTTP status it is reported with."""

    status = 500

    def __init__(self, message: str, status: int = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(BackendError):
    """Malformed JSON, missing fields, coordinates outside the image."""

    status = 400


class UnsupportedConfig(BackendError):
    """A label config the backend cannot produce results for (no Image, no BrushLabels/PolygonLabels)."""

    status = 422


class ModelUnavailable(BackendError):
    """The model is still loading past the wait limit, or failed to load."""

    status = 503
