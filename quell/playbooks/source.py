"""Reading playbook text while remembering where each value was written.

PyYAML's composer gives every node its start mark; :func:`load` builds the plain data and, beside
it, a map from each value's path (``("steps", 2, "with", "ip")``) to its line and column, so
that a problem found in the data can be reported as ``file:line:col``. JSON is YAML here: a
CACAO file reads the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from quell.errors import InvalidInput
from quell.playbooks.ir import Position

Path = tuple[str | int, ...]
MAX_SOURCE_BYTES = 4 * 1024 * 1024


@dataclass
class Source:
    """Parsed playbook text: the data, and where each part of it was written."""

    data: Any
    file: str | None = None
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path) -> Position:
        """Where ``path`` (or the nearest thing that contains it) was written."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:end]))
            if found is not None:
                return Position(self.file, found[0], found[1])
        return Position(self.file)


MAX_DEPTH = 100  # levels of nesting a document may have


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader (no Python tags) that refuses aliases and deep nesting.

    An alias (``*name``) repeats the node it names: a few hundred bytes of nested aliases expand
    to billions of values for whatever walks the data (the positions here, the compiler, the
    IR's JSON). Nothing Quell reads needs them, so they are refused where they are written.
    The composer recurses once per level: nesting is bounded before Python's stack is."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            raise ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed here: write the value out",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_data(text: str, what: str) -> Any:
    """Plain data from YAML (or JSON) text given by a user (a file of options, a rule):
    SafeLoader's types, no aliases; InvalidInput naming ``what`` and where when it does not
    parse."""
    loader = _PlainLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{what}:{mark.line + 1}:{mark.column + 1}" if mark else what
        raise InvalidInput(f"{where}: {exc.problem or 'not valid YAML'}", field=what) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{what}: not valid YAML or JSON ({exc})", field=what) from None
    finally:
        loader.dispose()


class _Loader(_PlainLoader):
    """The playbook loader: :class:`_PlainLoader`, with YAML 1.1's ``on``/``yes`` booleans kept
    as text."""


# ``on: alert.created`` must stay the key "on", not become True.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load(text: str | bytes, file: str | None = None) -> Source:
    """Parse YAML (or JSON) text; InvalidInput with ``file:line:col`` when it does not parse."""
    if len(text) > MAX_SOURCE_BYTES:
        raise InvalidInput(f"{file or 'playbook'}: larger than {MAX_SOURCE_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{file or 'playbook'}: not UTF-8 text ({exc.reason})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise InvalidInput(f"{file or 'playbook'}: the file is empty", field="playbook")
        positions: dict[Path, tuple[int, int]] = {}
        _walk(node, (), positions)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = Position(file, mark.line + 1, mark.column + 1) if mark else Position(file)
        raise InvalidInput(
            f"{where}: {exc.problem or 'not valid YAML'}", field="playbook"
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{file or 'playbook'}: not valid YAML ({exc})") from None
    finally:
        loader.dispose()
    return Source(data, file, positions)


def _walk(node: Node, path: Path, positions: dict[Path, tuple[int, int]]) -> None:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode):
                child = (*path, key.value)
                # The key's own place: an error about the entry points at its name.
                positions[child] = (key.start_mark.line + 1, key.start_mark.column + 1)
                _walk_value(value, child, positions)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), positions)


def _walk_value(node: Node, path: Path, positions: dict[Path, tuple[int, int]]) -> None:
    key_place = positions[path]
    _walk(node, path, positions)
    positions[path] = key_place  # keep pointing at the key for the entry itself


__all__ = ["MAX_DEPTH", "Path", "Source", "load", "load_data"]
