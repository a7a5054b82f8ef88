"""POST /v1/kascade/feedback: a user rating against a request id."""

from __future__ import annotations

import json
from typing import Any

from kascade.gateway.endpoints import errors
from kascade.gateway.route import pipeline, shadow

_RATINGS = {
    "up": "positive",
    "down": "negative",
    "positive": "positive",
    "negative": "negative",
    "neutral": "neutral",
}


def _bad(message: str, param: str | None) -> errors.ApiError:
    return errors.ApiError(status=400, message=message, param=param, code="invalid_value")


def _label(rating: Any) -> str:
    """positive, negative or neutral: up/down/positive/negative/neutral or 1-5."""
    if isinstance(rating, str) and rating in _RATINGS:
        return _RATINGS[rating]
    if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
        return "positive" if rating >= 4 else "negative" if rating <= 2 else "neutral"
    raise _bad(
        "`rating` must be up, down, positive, negative, neutral or an integer 1-5.", "rating"
    )


def _body(state: pipeline.State, raw: bytes) -> dict[str, Any]:
    """The validated body (400 for a bad field, 404 for an unknown policy)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"Request body is not valid JSON: {exc}", None) from None
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object.", None)
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not 8 <= len(request_id) <= 128:
        raise _bad("`request_id` must be the x-kascade-request-id of a response.", "request_id")
    policy = body.get("policy")
    if policy is not None and policy not in state.runtime.policies:
        raise errors.ApiError(
            status=404,
            message=f"Unknown policy {policy!r}.",
            param="policy",
            code="model_not_found",
        )
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 2000):
        raise _bad("`comment` must be a string of at most 2000 characters.", "comment")
    return body


async def record(state: pipeline.State, *, raw: bytes, caller: str) -> dict[str, Any]:
    """Validates `{"request_id", "rating", "policy"?, "comment"?}` and records it as a
    metric and an audit line; labels the rated local answer where its policy's target
    takes ratings (``shadow.label_from_rating``). ``caller``:
    ``kept_answers.caller_identity`` of who rates."""
    body = _body(state, raw)
    request_id, rating, policy = body["request_id"], body.get("rating"), body.get("policy")
    label = _label(rating)
    comment = body.get("comment")
    state.metrics.feedback.labels(policy or "", label).inc()
    arm, why = await shadow.label_from_rating(
        quality=state.quality,
        request_id=request_id,
        rating=label,
        caller=caller,
        metrics=state.metrics,
        audit=state.audit,
        policy=policy,
        arm_for=lambda name, variant: pipeline.serving_arm(state, name, variant),
    )
    labelled: dict[str, Any] = (
        {"labelled": True, "variant": arm.variant}
        if arm is not None
        else {"labelled": False, "reason": why}
    )
    # The comment is free text a user typed: it may hold personal data, so only its
    # length reaches the audit log.
    state.audit.write(
        {
            "type": "feedback",
            "request_id": request_id,
            "policy": policy,
            "rating": rating,
            "label": label,
            "comment_chars": len(comment) if comment else 0,
            **labelled,
        }
    )
    return {"recorded": True, "request_id": request_id, "label": label, **labelled}
