"""Small shared helpers with no knowledge of jobs or Ray: files, ports, caches."""
