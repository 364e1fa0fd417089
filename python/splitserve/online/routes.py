"""Feedback's HTTP routes: POST /splitserve/feedback/{endpoint} and
GET /splitserve/experiments/{endpoint}. Thin: read, call the service off the loop, answer.

The answer to a feedback request (README, "Closing the loop"): a body of one record answers
200 with the record's outcome when it joined, else the refusal's error (404 UnknownInferenceId,
409 DuplicateFeedback or WrongEndpointFeedback, 410 LateFeedback, 422 UnscorableFeedback, 400
ValidationError for a malformed record). A batch (a JSON array or JSON Lines) answers 200 with
every record's outcome in order: `{"Joined": n, "Refused": n, "Records": [{"EventId",
"Outcome", "Message"}]}`; a body that cannot be read as records at all is a 400 (413 when over
the size limit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from splitserve.config import FeedbackSettings
from splitserve.errors import PayloadTooLarge, ServiceUnavailable
from splitserve.online.service import FeedbackService

__all__ = ["EXPERIMENT_PATH", "FEEDBACK_PATH", "routes"]

FEEDBACK_PATH = "/splitserve/feedback/{endpoint}"
EXPERIMENT_PATH = "/splitserve/experiments/{endpoint}"


def routes(
    service: Callable[[], FeedbackService | None], settings: FeedbackSettings
) -> list[web.RouteDef]:
    """Feedback's route table over the service `service()` returns (None until the app has
    started it: those requests answer 503)."""

    def started() -> FeedbackService:
        running = service()
        if running is None:
            raise ServiceUnavailable("Feedback is not available yet; try again.")
        return running

    async def post_feedback(request: web.Request) -> web.Response:
        """POST /splitserve/feedback/{endpoint}: join label records to invocations."""
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            raise PayloadTooLarge(
                f"The feedback body is {length} bytes; at most {settings.max_body_bytes} per "
                "request."
            )
        body = await request.read()
        answer = await asyncio.to_thread(started().submit, request.match_info["endpoint"], body)
        return web.json_response(answer.to_json())

    async def get_experiment(request: web.Request) -> web.Response:
        """GET /splitserve/experiments/{endpoint}: the live experiment now."""
        view = await asyncio.to_thread(started().look, request.match_info["endpoint"])
        return web.json_response(view)

    return [web.post(FEEDBACK_PATH, post_feedback), web.get(EXPERIMENT_PATH, get_experiment)]
