"""Write scoping of puts: a scoped caller writes only rows of its own projects.

Writes are scoped like reads. A dataset carries a project when it has the project column
reads are filtered on (`scoping.project_column`: one rule for reads and writes). For a
caller scoped to some projects (every role but admin):

- each conformed batch is checked as it arrives, vectorised: a row whose project is
  null or not one of the caller's refuses the whole put (PERMISSION_DENIED), and as the
  put has not committed, nothing of it is stored;
- a put may not change the schema of an existing dataset (new columns, or a replace):
  datasets are shared, so their schema evolves only by an admin. Creating a new dataset
  is not evolution;
- at the commit, under the dataset's lock, the dataset as it is then must still allow
  the put: a dataset created or widened by another put meanwhile (new columns, or a
  project column this put's rows lack) refuses it.

Admins (and the anonymous caller of a server without authentication) are not scoped.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from flight_server.context import Caller
from flight_server.errors import PermissionDenied
from flight_server.security.scoping import project_column

_SHOWN = 60  # characters of an offending project id shown in the message


def _project_column(dataset: str, schema: pa.Schema | None) -> str | None:
    return project_column(dataset, schema.names if schema is not None else ())


def _shown(value: object) -> str:
    return str(value)[:_SHOWN].encode("unicode_escape").decode()


class WriteScope:
    """What one caller's put into one dataset may write (see module docstring)."""

    def __init__(self, caller: Caller, dataset: str, schema: pa.Schema) -> None:
        """`schema` is the put's file schema (the dataset's columns, then the put's new ones)."""
        self.dataset = dataset
        self.projects = caller.projects
        self.column = _project_column(dataset, schema) if self.projects is not None else None
        self._index = schema.get_field_index(self.column) if self.column is not None else -1
        self._allowed = pa.array(sorted(self.projects or ()), pa.string())

    @property
    def scoped(self) -> bool:
        return self.projects is not None

    def check_schema(self, existing: pa.Schema | None, added: list[str], replace: bool) -> None:
        """Refuse a scoped put that would change an existing dataset's schema (before any row is read)."""
        if not self.scoped or existing is None:
            return
        if replace:
            raise PermissionDenied(
                f"only an admin may replace dataset '{self.dataset}'; append rows of your projects instead"
            )
        if added:
            shown = ", ".join(_shown(name) for name in added[:5]) + (", ..." if len(added) > 5 else "")
            raise PermissionDenied(
                f"only an admin may add columns to dataset '{self.dataset}' (new: {shown}); send only its columns"
            )

    def check_rows(self, batch: pa.RecordBatch) -> None:
        """Refuse a batch holding a row whose project is null or not the caller's."""
        if self._index < 0 or not batch.num_rows:
            return
        column = batch.column(self._index)
        if column.null_count:
            raise PermissionDenied(
                f"{column.null_count} row(s) have no {self.column}; every row you put must name one of your "
                "projects; nothing was stored"
            )
        try:
            ids = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise PermissionDenied(f"column {self.column} must hold project ids; nothing was stored") from None
        foreign = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=self._allowed)))
        if len(foreign):
            raise PermissionDenied(
                f"no write access to project '{_shown(foreign[0].as_py())}' ({self.column} of {len(foreign)} "
                "row(s)); put only rows of your projects; nothing was stored"
            )

    def check_commit(self, current: pa.Schema | None, merged: pa.Schema) -> None:
        """At the commit, under the dataset's lock: the dataset as it is now still allows the put."""
        if not self.scoped or current is None:
            return
        known = set(current.names)
        self.check_schema(current, [name for name in merged.names if name not in known], replace=False)
        if self.column is None and _project_column(self.dataset, current) is not None:
            raise PermissionDenied(
                f"dataset '{self.dataset}' now has a project column that your rows lack; send it again with it"
            )
