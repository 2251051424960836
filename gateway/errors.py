"""The gateway's exception tree and its RFC 9457 problem documents.

Every error a client can see is a :class:`TillgateError`; the API renders it as
``application/problem+json`` with a stable snake_case ``code``::

    TillgateError                      (500 internal_error)
    ├── BadRequest                     (400 bad_request, malformed_json, invalid_cursor, ...)
    ├── Unauthorized                   (401 unauthorized)
    ├── NotFound                       (404 not_found)
    ├── MethodNotAllowed               (405 method_not_allowed)
    ├── Conflict                       (409 conflict, insufficient_stock, stale_count, ...)
    │   └── IdempotencyInFlight        (409 idempotency_request_in_progress)
    ├── PayloadTooLarge                (413 payload_too_large)
    ├── UnsupportedMediaType           (415 unsupported_media_type)
    ├── ValidationFailed               (422 validation_error; ``errors`` lists the fields)
    │   ├── IdempotencyKeyReused       (422 idempotency_key_reused)
    │   └── OperationNotSupported      (422 operation_not_supported)
    ├── RateLimited                    (429 rate_limited)
    └── VendorError                    (502 vendor_error; adds vendor, vendor_status, retryable)
        ├── VendorUnavailable          (503 vendor_unavailable, retryable)
        ├── VendorTimeout              (504 vendor_timeout, retryable)
        └── VendorCredentialsRejected  (424 vendor_credentials_rejected)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://tillgate.dev/problems/"


class TillgateError(Exception):
    """Base of every client-visible error.

    Args:
        detail: a human-readable explanation of this occurrence.
        code: stable snake_case code; defaults to the class's ``code``.
        errors: field-level problems, each ``{"loc": [...], "msg": str, "type": str}``.
        extra: further members of the problem document (e.g. ``retry_after``).
    """

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.detail = detail or self.title
        if code:
            self.code = code
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)

    def problem(self, request_id: str | None = None) -> dict[str, Any]:
        """Return the RFC 9457 problem document for this error."""
        doc: dict[str, Any] = {
            "type": TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "request_id": request_id,
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        doc.update(self.extra)
        return doc


class BadRequest(TillgateError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(TillgateError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="tillgate"'})
        super().__init__(detail, **kwargs)


class NotFound(TillgateError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(TillgateError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class Conflict(TillgateError):
    status, code, title = 409, "conflict", "Conflict"


class IdempotencyInFlight(Conflict):
    code, title = "idempotency_request_in_progress", "A request with this Idempotency-Key is in progress"


class PayloadTooLarge(TillgateError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(TillgateError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class ValidationFailed(TillgateError):
    status, code, title = 422, "validation_error", "The request is not valid"


def field_error(loc: Iterable[str | int], msg: str, type_: str, *, code: str | None = None) -> ValidationFailed:
    """A 422 naming one field: ``errors=[{"loc": [...], "msg": msg, "type": type_}]``, ``loc`` as
    strings (``["body", "lines", "0", "quantity"]``, the shape ``schemas/problem.json`` shows),
    ``code`` when it is more specific than ``validation_error``."""
    return ValidationFailed(msg, code=code, errors=[{"loc": [str(part) for part in loc], "msg": msg, "type": type_}])


class IdempotencyKeyReused(ValidationFailed):
    code, title = "idempotency_key_reused", "Idempotency-Key was used with another request"


class OperationNotSupported(ValidationFailed):
    code, title = "operation_not_supported", "The connector does not support this operation"


class WebhookMalformed(BadRequest):
    """An inbound vendor webhook whose headers or body cannot be read (400)."""

    code, title = "webhook_malformed", "The webhook delivery is malformed"


class WebhookSignatureInvalid(Unauthorized):
    """An inbound vendor webhook whose signature does not verify, or whose timestamp is outside the
    replay window (401)."""

    code, title = "webhook_signature_invalid", "The webhook signature does not verify"


class RateLimited(TillgateError):
    status, code, title = 429, "rate_limited", "Too many requests"


class VendorError(TillgateError):
    """The POS vendor failed; ``vendor``, ``vendor_status``, ``retryable``, ``retry_after`` are added."""

    status, code, title = 502, "vendor_error", "The POS vendor answered with an error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        vendor: str,
        vendor_status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            detail,
            vendor=vendor,
            vendor_status=vendor_status,
            retryable=retryable,
            retry_after=retry_after,
            **kwargs,
        )

    @property
    def retryable(self) -> bool:
        return bool(self.extra.get("retryable"))


class VendorUnavailable(VendorError):
    status, code, title = 503, "vendor_unavailable", "The POS vendor is unavailable"


class VendorTimeout(VendorError):
    status, code, title = 504, "vendor_timeout", "The POS vendor did not answer in time"


class VendorCredentialsRejected(VendorError):
    status, code, title = 424, "vendor_credentials_rejected", "The POS vendor rejected the credentials"


def pydantic_errors(exc: Any, prefix: tuple[str, ...] = ("body",)) -> list[dict[str, Any]]:
    """Turn a ``pydantic.ValidationError`` into the problem document's ``errors`` list."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        out.append({"loc": [*prefix, *[str(part) for part in err["loc"]]], "msg": err["msg"], "type": err["type"]})
    return out
