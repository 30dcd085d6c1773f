"""The HTTP control API: a Ray Serve application (FastAPI ingress) in front of the runtime actors.

Modules: ``routes`` (the ControlAPI deployment and its routes), ``app`` (the FastAPI app, OpenAPI,
exception handlers), ``models`` (request/response models), ``errors`` (the one JSON error shape),
``middleware`` (bearer auth and who the token is, body limit, last-resort 500), ``access`` (the
replica's access part: token identities, ownership checks, the audit trail), ``access_routes``
(/tokens, /audit), ``package_routes`` (code packages), ``schedule_routes`` (/schedules), ``settings`` (what a replica is given),
``deploy`` (``deploy_api`` / ``undeploy_api``), ``token`` (the one token resolver) and
``_serve_compat`` (the Ray Serve 2.60 workarounds). Nothing is imported here, so ``api.token`` stays
cheap for clients that never import Ray.
"""
