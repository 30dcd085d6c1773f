"""Request bodies the API parses by hand (so that every error keeps the one shape): JSON only (415
for another declared media type), 422 for a body that is not JSON or nests too deep, naming where.
No ``from __future__ import annotations`` here either (Serve rebuilds the endpoints that use it)."""

import json
from typing import Any

from fastapi import Request

from raycluster import constants as C
from raycluster.api.errors import ApiError


def json_body_doc(schema: str) -> dict:
    """OpenAPI for a JSON request body the route parses by hand (so that errors keep one shape)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}}


async def json_body(request: Request) -> Any:
    """The request's JSON body: 415 for another declared media type (none declared: read as JSON),
    422 for a body that is not JSON or nests deeper than API_MAX_JSON_DEPTH (naming where)."""
    declared = request.headers.get("content-type")
    if declared is not None:
        media = declared.split(";", 1)[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise ApiError(415, "unsupported_media_type", f"the body must be JSON (Content-Type: application/json), "
                                                          f"not {media or 'empty'}", field="Content-Type")
    try:
        data = json.loads(await request.body())
    except RecursionError:
        raise ApiError(422, "invalid_json", f"request body nests deeper than {C.API_MAX_JSON_DEPTH} levels",
                       field="body") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_json", f"request body is not valid JSON: {exc}") from None
    where = too_deep(data, C.API_MAX_JSON_DEPTH)
    if where is not None:
        raise ApiError(422, "invalid_json", f"{where} nests deeper than {C.API_MAX_JSON_DEPTH} levels",
                       field=where)
    return data


def too_deep(data: Any, max_depth: int) -> str | None:
    """Where ``data`` nests deeper than ``max_depth`` (the field path to it, as far as 3 names), or None."""
    stack = [(data, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth >= max_depth:
            return ".".join(path.split(".")[:3]) or "body"
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, (dict, list)):
                name = f"{path}.{k}" if isinstance(node, dict) else f"{path}[{k}]"
                stack.append((v, depth + 1, name.lstrip(".")))
    return None
