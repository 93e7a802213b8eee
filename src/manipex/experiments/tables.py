"""The tables of an experiment's report (issue 27): each declared once as a :class:`Table` with a
short, stable ``id``, the ``title`` printed above it, and the report's ``heading`` and
``caption``; a run's tables are a :class:`Tables` mapping, by id, to pandas DataFrames.

Code, tests and users index tables by id (``tables["verdict"]``), never by their English
titles, and no caption is found by matching a title against a pattern. A title, heading or
caption may hold ``{name}`` fields that the run fills (``eps``, ``alpha``, ``method``)::

    class MyExperiment(Experiment):
        TABLES = (Table("rise", "Rise of the PCC at eps = {eps}", "How far the maps move",
                        "Mean rise of the PCC with the target per method. Higher = manipulated more."),)

        def tables(self, df, config):
            out = self.new_tables()
            out.add("rise", df.groupby("method")["pcc_rise"].mean().to_frame(), eps=config.eps)
            return out

One declared table may appear several times in a run, once per method say: ``out.add(f"t33_{m}",
frame, spec="t33", method=m)`` gives each its own id.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Table:
    """One table of a report: ``id`` (short, stable: what code indexes by), ``title`` (printed
    above the table in the terminal), ``heading`` and ``caption`` (the report's: what the table
    shows and which direction is better; the heading defaults to the title). Each may hold
    ``{name}`` fields, filled by :meth:`filled`."""

    id: str
    title: str
    heading: str = ""
    caption: str = ""

    def filled(self, id: Optional[str] = None, **fields: Any) -> "Table":
        """This table with its ``{name}`` fields filled from ``fields`` (and the instance's id)."""
        try:
            return replace(self, id=id or self.id, title=self.title.format(**fields),
                           heading=(self.heading or self.title).format(**fields), caption=self.caption.format(**fields))
        except (KeyError, IndexError) as err:
            raise ValueError(f"table {self.id!r}: its title, heading or caption needs the field {err}; "
                             f"given: {', '.join(sorted(fields)) or 'none'}") from None


class Tables(Mapping[str, Any]):
    """A run's tables in report order: ``tables[id]`` is the DataFrame, :meth:`table` its
    :class:`Table` (title, heading, caption filled), :meth:`entries` both, in order.

    Built from an experiment's declared tables (:meth:`Experiment.new_tables
    <manipex.experiments.base.Experiment.new_tables>`); :meth:`add` names the declared table by
    id. ``add(id, None)`` keeps the table's place without a frame (filled later, or left out)."""

    def __init__(self, declared: Iterable[Table] = ()) -> None:
        self._declared: Dict[str, Table] = {}
        for table in declared:
            if table.id in self._declared:
                raise ValueError(f"table id {table.id!r} is declared twice")
            self._declared[table.id] = table
        self._entries: Dict[str, Tuple[Table, Any]] = {}

    def add(self, id: str, frame: Any, *, spec: Optional[str] = None, **fields: Any) -> None:
        """Add ``frame`` as the table ``id``, declared as ``spec`` (default: ``id``), with its
        title's fields; a frame of None keeps the place and shows nothing."""
        name = spec or id
        if name not in self._declared:
            raise KeyError(f"no table {name!r} is declared; declared: {', '.join(self._declared) or 'none'}")
        self._entries[id] = (self._declared[name].filled(id, **fields), frame)

    def _entry(self, id: str) -> Tuple[Table, Any]:
        entry = self._entries.get(id)
        if entry is None or entry[1] is None:
            raise KeyError(f"no table {id!r} in this run; its tables: {', '.join(self) or 'none'}")
        return entry

    def __getitem__(self, id: str) -> Any:
        return self._entry(id)[1]

    def __iter__(self) -> Iterator[str]:
        return (id for id, (_, frame) in self._entries.items() if frame is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def table(self, id: str) -> Table:
        """The :class:`Table` (title, heading and caption filled) of the table ``id``."""
        return self._entry(id)[0]

    def entries(self) -> List[Tuple[Table, Any]]:
        """``(Table, DataFrame)`` of every table with a frame, in report order."""
        return [(table, frame) for table, frame in self._entries.values() if frame is not None]

    def titles(self) -> Dict[str, str]:
        """``id -> title`` of every table, in report order."""
        return {table.id: table.title for table, _ in self.entries()}

    def __repr__(self) -> str:
        return f"Tables({', '.join(self) or 'none'})"


def as_entries(tables: Any) -> List[Tuple[Table, Any]]:
    """``(Table, frame)`` pairs of a :class:`Tables`, or of a plain ``{title: frame}`` mapping (a
    hand-made report: each title its own id and heading, no caption)."""
    if isinstance(tables, Tables):
        return tables.entries()
    if isinstance(tables, Mapping):
        return [(Table(str(title), str(title)), frame) for title, frame in tables.items() if frame is not None]
    raise TypeError(f"tables must be a Tables or a mapping of title -> DataFrame, got {type(tables).__name__}")


__all__ = ["Table", "Tables", "as_entries", "findings_table_spec"]


def findings_table_spec(whose: str = "The papers'") -> Table:
    """The ``"findings"`` table every paper experiment shows first: ``whose`` claims as this run
    finds them (:func:`~manipex.experiments.published.findings_table`)."""
    return Table("findings", "Findings", "What this run finds",
                 f"{whose} claims, the published numbers, ours in this run's setting, and a verdict; 'why' says "
                 "what is known where a claim does not hold.")
