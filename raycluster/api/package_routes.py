"""The API's code-package routes: plain FastAPI functions on the same ``app`` as ``routes.py``'s,
served by the same replica (the shape of Ray's job server, for specs whose code is a local
directory: ``client/packages.py`` uploads it here).

Owns::

    GET    /api/packages/gcs/{name}   200 if the cluster holds the package, else 404 (any token)
    PUT    /api/packages/gcs/{name}   upload a zip (members and admins; up to API_MAX_PACKAGE_BYTES,
                                      checked by the middleware), pinned PACKAGE_PIN_S

No ``from __future__ import annotations`` (FastAPI resolves these annotations at import).
"""

import asyncio
import io
import logging
import zipfile

from fastapi import Path as PathParam, Request

from raycluster import constants as C
from raycluster.api.access_routes import replica_access
from raycluster.api.app import COMMON, E, app
from raycluster.api.errors import ApiError
from raycluster.api.models import Package
from raycluster.policy import access as A

log = logging.getLogger("raycluster.api")
PACKAGE_NAME = r"^_ray_pkg_[0-9a-f]{8,128}\.zip$"  # content-addressed, as Ray names them
PACKAGE_MEDIA = ("application/zip", "application/octet-stream", "application/x-zip-compressed")


@app.get("/api/packages/{protocol}/{name}", response_model=Package, tags=["jobs"],
         responses={**COMMON, 404: {**E, "description": "the cluster has no such package"}},
         summary="whether the cluster holds a code package (Ray's job-server shape)")
async def get_package(protocol: str = PathParam(..., pattern="^gcs$"),
                      name: str = PathParam(..., pattern=PACKAGE_NAME)) -> dict:
    from ray._private.runtime_env.packaging import package_exists

    uri = f"gcs://{name}"
    if not await asyncio.to_thread(package_exists, uri):
        raise ApiError(404, "not_found", f"no package {uri}")
    return {"uri": uri}


@app.put("/api/packages/{protocol}/{name}", response_model=Package, tags=["jobs"],
         responses={**COMMON, 413: {**E, "description": "larger than API_MAX_PACKAGE_BYTES"},
                    422: {**E, "description": "not a zip, or a bad name"}},
         openapi_extra={"requestBody": {"required": True, "content": {
             "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
         summary="upload a code package (a zip named by its content's hash) that a spec's runtime_env "
                 "refers to as gcs://NAME; kept PACKAGE_PIN_S, and while a job using it is unfinished")
async def put_package(request: Request, protocol: str = PathParam(..., pattern="^gcs$"),
                      name: str = PathParam(..., pattern=PACKAGE_NAME)) -> dict:
    from ray._private.runtime_env.packaging import pin_runtime_env_uri, upload_package_to_gcs

    part = replica_access()
    A.authorize(part.who(request), A.UPLOAD_PACKAGE)
    declared = request.headers.get("content-type")
    media = (declared or "application/zip").split(";", 1)[0].strip().lower()
    if media not in PACKAGE_MEDIA:
        raise ApiError(415, "unsupported_media_type", f"a package is a zip (Content-Type: application/zip), "
                                                      f"not {media or 'empty'}", field="Content-Type")
    data = await request.body()
    if not data or not zipfile.is_zipfile(io.BytesIO(data)):
        raise ApiError(422, "invalid_package", "the body is not a zip archive", field="body")
    uri = f"gcs://{name}"
    await asyncio.to_thread(upload_package_to_gcs, uri, data)
    await asyncio.to_thread(pin_runtime_env_uri, uri, expiration_s=C.PACKAGE_PIN_S)
    log.info("package %s uploaded (%d bytes)", uri, len(data))
    part.audit(request, uri)
    return {"uri": uri}
