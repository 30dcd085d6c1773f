"""How nodes come to exist: the ``ray start`` command line, environment and registration wait
(shared by every market), Ray token auth for drivers, and the embedded local cluster (``local/``)."""
