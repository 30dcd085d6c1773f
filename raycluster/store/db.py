"""SQLite plumbing shared by every store: WAL connections, tables derived from one record model.

Owns: opening a database (WAL, busy timeout), and ``Table`` — a table whose columns, DDL, row
mapping and additive migration all come from one pydantic model (the record), so a field is
written once. JSON-typed fields (dicts, lists, ``Any``) are stored as JSON text; enums by value.
"""

from __future__ import annotations

import json
import sqlite3
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def connect(path: Path) -> sqlite3.Connection:
    """Open a SQLite database in WAL mode (durable across process kills, readers never block)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _unoptional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, False


class Column:
    """One column, derived from a model field."""

    def __init__(self, name: str, annotation: Any, default: Any, required: bool, constraint: str,
                 default_factory: Any = None):
        tp, nullable = _unoptional(annotation)
        nullable = nullable or (not required and default is None and default_factory is None)
        self.name = name
        # what a NULL of a non-nullable column reads as (rows written before the column existed)
        self._empty = None if nullable else (default_factory if default_factory is not None else (lambda: default))
        self.enum = tp if isinstance(tp, type) and issubclass(tp, Enum) else None
        if self.enum is not None or tp is str:
            self.sql_type, self.json = "TEXT", False
        elif tp is bool or tp is int:
            self.sql_type, self.json = "INTEGER", False
        elif tp is float:
            self.sql_type, self.json = "REAL", False
        else:  # dict, list, Any: JSON text
            self.sql_type, self.json = "TEXT", True
        sql_default = ""
        if not required and isinstance(default, (int, float, str)) and not isinstance(default, bool):
            sql_default = f"DEFAULT {default!r}" if not isinstance(default, str) else f"DEFAULT '{default}'"
        not_null = "NOT NULL" if not nullable and "PRIMARY KEY" not in constraint else ""
        self.ddl = " ".join(p for p in (name, self.sql_type, constraint, not_null, sql_default) if p)
        # reading needs work only for JSON, enums, and NULLs of non-nullable columns without an SQL
        # default (rows written before the column existed); every other value is stored as read
        self.needs_decode = self.json or self.enum is not None or (not nullable and not sql_default and not required)
        # ALTER TABLE ADD COLUMN cannot add NOT NULL without a default (old rows read as the default)
        self.add_ddl = " ".join(p for p in (name, self.sql_type, not_null if sql_default else "", sql_default) if p)
        self._required = required

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if self.json:
            return json.dumps(value)
        if isinstance(value, Enum):
            return value.value
        return value

    def decode(self, value: Any) -> Any:
        if value is None:
            return self._empty() if self._empty is not None and not self._required else None
        if self.json:
            return json.loads(value)
        if self.enum is not None:
            return self.enum(value)
        return value


class Table:
    """A SQLite table whose columns are the fields of ``model`` (in order)."""

    def __init__(self, name: str, model: type[BaseModel], extra_ddl: str = ""):
        self.name = name
        self.model = model
        self.columns = [
            Column(fname, f.annotation, f.default, f.is_required(),
                   (f.json_schema_extra or {}).get("sql", "") if isinstance(f.json_schema_extra, dict) else "",
                   f.default_factory)
            for fname, f in model.model_fields.items()
        ]
        self.by_name = {c.name: c for c in self.columns}
        self.select_list = ", ".join(c.name for c in self.columns)
        self._names = [c.name for c in self.columns]
        self._decoded = [(c.name, c.decode) for c in self.columns if c.needs_decode]
        self._fields_set = set(self._names)
        self.extra_ddl = extra_ddl

    def create(self, conn: sqlite3.Connection) -> None:
        """CREATE TABLE if missing; add the columns an older database lacks (additive migration)."""
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(c.ddl for c in self.columns)})")
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({self.name})")}
        for col in self.columns:
            if col.name not in have:
                conn.execute(f"ALTER TABLE {self.name} ADD COLUMN {col.add_ddl}")
        if self.extra_ddl:
            conn.executescript(self.extra_ddl)

    def row(self, values: tuple) -> BaseModel:
        """A model instance from a ``SELECT {select_list}`` row. Trusted, so not re-validated, and
        built the way ``model_construct`` does minus its per-field default handling (the reconcile
        loop and every API read go through here)."""
        data = dict(zip(self._names, values))
        for name, decode in self._decoded:
            data[name] = decode(data[name])
        obj = self.model.__new__(self.model)
        object.__setattr__(obj, "__dict__", data)
        object.__setattr__(obj, "__pydantic_fields_set__", self._fields_set)
        object.__setattr__(obj, "__pydantic_extra__", None)
        object.__setattr__(obj, "__pydantic_private__", None)
        return obj

    def encode(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {k: self.by_name[k].encode(v) for k, v in fields.items()}
