"""Durable state in SQLite (WAL): job lifecycle, jobs, checkpoint registry. Imports nothing from Ray."""
