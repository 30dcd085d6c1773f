"""Clients of a running raycluster: over Ray (``ray_client.Client``) or over HTTP
(``http_client.HttpClient``, which never imports Ray), sharing ``base.ClientBase``."""
