"""``POST /hooks/{connection_id}``: inbound vendor webhooks.

No API key: the vendor calls this URL, and the connection's connector authenticates the call by
its signature (:meth:`~gateway.sdk.connector.Connector.verify_webhook`). The delivery is stored
with its processing job before the answer (:meth:`gateway.services.inbox.Inbox.receive`), so a 2xx
means it is on disk; a worker applies it to the cache afterwards.

Answers: ``200 {"received": true, "id": "inb_...", "duplicate": false}`` (``duplicate: true``
for an event id stored before); ``400 webhook_malformed``; ``401 webhook_signature_invalid``;
``404 not_found`` (no such connection); ``413`` above 1 MiB; ``422 operation_not_supported``
(the connection's connector receives no webhooks). Never a 500 for any body or header.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.deps import services
from gateway.api.http import json_response, read_body
from gateway.errors import TillgateError, WebhookMalformed

log = logging.getLogger(__name__)


async def receive_webhook(request: Request) -> Response:
    """Verify, store, acknowledge; ring the dispatcher for the new delivery's job."""
    svc = services(request)
    connector = await svc.connections.connector_by_id(request.path_params["connection_id"])
    body = await read_body(request)
    try:
        event = connector.verify_webhook(request.headers, body, time.time())
    except TillgateError:
        raise
    except Exception as exc:  # a connector bug must not turn a vendor's odd delivery into a 500
        log.exception("connector %s failed to verify a webhook delivery", connector.name())
        raise WebhookMalformed("the delivery could not be read") from exc
    received = await svc.inbox.receive(connector, event, body)
    if received.job_id is not None and svc.dispatcher is not None:
        await svc.dispatcher.notify(received.job_id)
    return json_response({"received": True, "id": received.id, "duplicate": received.duplicate})


routes = [Route("/hooks/{connection_id}", receive_webhook, methods=["POST"])]
