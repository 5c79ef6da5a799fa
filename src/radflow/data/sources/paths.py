"""Where a source's images may come from: inside the source folder the user gave, and nowhere else.

Every reader finds its files through :class:`SourceFolder`, so one rule holds for all formats. A
path a label table names must be relative, must not climb with ``..``, and must land on a regular
file whose real location (symlinks followed) is inside the folder; a folder walk reports links
that point out instead of reading them. A copy of a source is therefore read as the copy, never
as a sibling that happens to share its folder name.

When a format allows several readings of a table's path (CheXpert's paths start with the
dataset's folder name, which a copy may have renamed), each reading is a :class:`Rule`. A path
that two rules turn into two different files, a walk that finds two files for one name, and a
table whose rows resolve by different rules are errors (:class:`AmbiguousSourcePath`) naming the
table, row, path and every rule tried: picking one would silently ingest the wrong image. A path
no rule finds is a missing image (:class:`SourcePathError`), which the reader skips and counts.
Skip reasons (``SourcePathError.reason``) never contain the path itself, because ingest writes
them into ``dataset.json`` and source paths can carry patient names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from radflow.errors import DataError

__all__ = [
    "AS_WRITTEN",
    "WITHOUT_LEADING_FOLDER",
    "AmbiguousSourcePath",
    "Rule",
    "SourceFolder",
    "SourcePathError",
    "Walk",
]


@dataclass(frozen=True)
class Rule:
    """One reading of a table's path: its parts -> the parts below the source folder (None: not applicable)."""

    name: str
    apply: Callable[[tuple[str, ...]], tuple[str, ...] | None]


AS_WRITTEN = Rule("as written, below the source folder", lambda parts: parts)
WITHOUT_LEADING_FOLDER = Rule(
    "without its first folder (the dataset's own name), below the source folder",
    lambda parts: parts[1:] if len(parts) > 1 else None,
)


def _where(table: Path | None, row: int | None) -> str:
    if table is None:
        return ""
    return f"{table.name}, row {row}" if row is not None else table.name


class SourcePathError(DataError):
    """A path from a source that names no usable file inside it; the reader skips the row.

    ``reason`` is the path-free explanation that goes into ``dataset.json``; the message (for the
    console, e.g. under ``--strict``) also names the table, row and path.
    """

    def __init__(self, reason: str, written: str, table: Path | None = None, row: int | None = None):
        super().__init__(f"{reason} (path {written!r})", table, row)
        self.reason = reason


class AmbiguousSourcePath(DataError):
    """A source whose layout allows two readings; ingest stops rather than pick one."""


@dataclass
class Walk:
    """Files found below a folder: those inside the source, and links whose target lies outside it."""

    files: list[Path] = field(default_factory=list)
    outside: list[Path] = field(default_factory=list)


class SourceFolder:
    """The folder a source's files must stay inside, with the one resolver every reader uses."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.real = self.root.resolve()
        self._root_text = os.fspath(self.root)
        self._real_text = os.fspath(self.real)
        # Real locations of folders, each level resolved once: a source has many folders and few links.
        self._dirs: dict[str, str] = {self._root_text: self._real_text}
        self._names: dict[str, list[Path]] | None = None
        self._outside_names: dict[str, list[Path]] = {}
        self._rules_used: dict[str, tuple[Path | None, int | None, str]] = {}

    # ------------------------------------------------------------------------------ containment

    def _real_path(self, text: str, *, cache: bool = True) -> str:
        real = self._dirs.get(text)
        if real is not None:
            return real
        parent, name = os.path.split(text)
        if not parent or parent == text or os.path.islink(text):
            real = os.path.realpath(text)
        else:
            real = os.path.join(self._real_path(parent), name)
        if cache:
            self._dirs[text] = real
        return real

    def _contains(self, real: str) -> bool:
        return real == self._real_text or real.startswith(self._real_text.rstrip(os.sep) + os.sep)

    def inside(self, path: Path) -> bool:
        """Whether ``path``'s real location (symlinks followed) is inside the source folder."""
        return self._contains(self._real_path(os.fspath(path), cache=False))

    def relative(self, path: Path) -> str:
        """``path`` (found below the root) relative to the root, with forward slashes."""
        text, prefix = os.fspath(path), self._root_text.rstrip(os.sep) + os.sep
        if text.startswith(prefix):
            return text[len(prefix) :].replace(os.sep, "/")
        return Path(path).relative_to(self.root).as_posix()

    def walk(self, under: Path | None = None) -> Walk:
        """Every regular file below ``under`` (default: the root), sorted; links pointing out are set apart.

        Symlinked folders are not entered (a link back inside would list files twice); one that
        points outside the source is reported with the outside links.
        """
        start = self.root if under is None else Path(under)
        found = Walk()
        if not self.inside(start):
            found.outside.append(start)
            return found
        for folder, dirs, files in os.walk(start, followlinks=False):
            for name in dirs:
                link = os.path.join(folder, name)
                if os.path.islink(link) and not self.inside(Path(link)):
                    found.outside.append(Path(link))
            for name in files:
                path = os.path.join(folder, name)
                if not os.path.isfile(path):
                    continue
                inside = self._contains(self._real_path(path, cache=False))
                (found.files if inside else found.outside).append(Path(path))
        found.files.sort()
        found.outside.sort()
        return found

    # -------------------------------------------------------------------------------- resolution

    def resolve(
        self, written: str, rules: Sequence[Rule], *, table: Path | None = None, row: int | None = None
    ) -> Path:
        """The one file inside the source that ``written`` names under ``rules``.

        Raises :class:`SourcePathError` (skip the row) when the path is absolute, climbs out, or no
        rule finds a file inside; :class:`AmbiguousSourcePath` when two rules find two files.
        """
        parts = self._safe_parts(written, table, row)
        found: dict[str, tuple[Rule, Path]] = {}
        refused: list[Path] = []
        for rule in rules:
            below = rule.apply(parts)
            if not below:
                continue
            candidate = os.path.join(self._root_text, *below)
            if not os.path.isfile(candidate):
                continue
            real = self._real_path(candidate, cache=False)
            if not self._contains(real):
                refused.append(Path(candidate))
                continue
            found.setdefault(real, (rule, Path(candidate)))
        if len(found) > 1 or (found and refused):
            readings = [f"{rule.name} -> {self.relative(path)}" for rule, path in found.values()]
            readings += [f"{self.relative(path)} (links outside the source)" for path in refused]
            raise AmbiguousSourcePath(
                f"path {written!r} names {len(readings)} different files: " + "; ".join(readings) + ". "
                "Keep one copy of the images, or point --format's SRC at the folder that holds them.",
                table,
                row,
            )
        tried = "; ".join(rule.name for rule in rules)
        if refused:
            raise SourcePathError(
                f"image file links outside the source folder; not read (tried: {tried})", written, table, row
            )
        if not found:
            raise SourcePathError(f"image file missing (tried: {tried})", written, table, row)
        ((rule, path),) = found.values()
        self._note_rule(rule, table, row, written)
        return path

    def _safe_parts(self, written: str, table: Path | None, row: int | None) -> tuple[str, ...]:
        text = written.strip()
        if not text:
            raise SourcePathError("blank image path", written, table, row)
        if text.startswith("/"):
            raise SourcePathError(
                "absolute image path; paths must be relative to the source folder", written, table, row
            )
        parts = tuple(part for part in text.split("/") if part not in ("", "."))
        if ".." in parts:
            raise SourcePathError("image path climbs out of its folder with '..'; not read", written, table, row)
        return parts

    def _note_rule(self, rule: Rule, table: Path | None, row: int | None, written: str) -> None:
        self._rules_used.setdefault(rule.name, (table, row, written))

    def check_layout(self) -> None:
        """Refuse a table whose rows resolved by different rules: two layouts mixed in one source."""
        if len(self._rules_used) < 2:
            return
        examples = [
            f"{_where(table, row) or 'a row'} ({written!r}) {name}"
            for name, (table, row, written) in self._rules_used.items()
        ]
        raise AmbiguousSourcePath(
            f"the rows of {self.root} resolve by different rules, so its layout is ambiguous: "
            + "; ".join(examples)
            + ". Make every path in the table follow one layout.",
            self.root,
        )

    # ---------------------------------------------------------------------------- search by name

    def find(self, names: Iterable[str], *, written: str, table: Path | None = None, row: int | None = None) -> Path:
        """The one file anywhere below the root whose name is one of ``names`` (NIH, RSNA layouts)."""
        wanted = list(names)
        if any(Path(name).name != name or name in ("", ".", "..") for name in wanted):
            raise SourcePathError("image name must be a plain file name, without folders", written, table, row)
        index = self._index()
        matches = [path for name in wanted for path in index.get(name, [])]
        rule = "a file named " + " or ".join(repr(n) for n in wanted) + " anywhere below the source folder"
        if len(matches) > 1:
            raise AmbiguousSourcePath(
                f"{written!r} could be {len(matches)} files: "
                + ", ".join(self.relative(p) for p in matches)
                + f" (rule tried: {rule}). Keep one copy of each image in the source.",
                table,
                row,
            )
        if matches:
            return matches[0]
        if any(self._outside_names.get(name) for name in wanted):
            raise SourcePathError(
                "image file links outside the source folder; not read (tried: a file of that name below it)",
                written,
                table,
                row,
            )
        raise SourcePathError(
            "image file missing (tried: a file of that name anywhere below the source folder)", written, table, row
        )

    def _index(self) -> dict[str, list[Path]]:
        if self._names is None:
            walk = self.walk()
            self._names = {}
            for path in walk.files:
                self._names.setdefault(path.name, []).append(path)
            for path in walk.outside:
                self._outside_names.setdefault(path.name, []).append(path)
        return self._names
