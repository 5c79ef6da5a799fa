"""Errors of the service, each carrying its HTTP status; one handler in :mod:`radflow.serve.app` answers them."""

from __future__ import annotations

from radflow.errors import RadflowError

__all__ = [
    "AdminError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "ServiceError",
    "UnsupportedMediaError",
]


class ServiceError(RadflowError):
    """A request the service refuses; ``headers`` go into the answer (e.g. Retry-After)."""

    def __init__(self, msg: str, status_code: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(msg, status_code)
        self.headers = headers or {}


class OverloadedError(ServiceError):
    """The request queue is full or the model is not loaded: try again shortly."""

    status_code = 503


class RequestTimeoutError(ServiceError):
    """The request was not answered within the configured timeout."""

    status_code = 504


class PayloadTooLargeError(ServiceError):
    """The body is above the configured limit."""

    status_code = 413


class UnsupportedMediaError(ServiceError):
    """The declared or sniffed type is not one the service accepts."""

    status_code = 415


class AdminError(ServiceError):
    """Admin endpoint refused: disabled (404), no token (401) or wrong token (403)."""

    status_code = 403
