"""YAML read with each key of a mapping given once: PyYAML keeps the last of a repeated key without a word, so a
config with ``epochs: 3`` and, further down, ``epochs: 8`` trained 8 epochs and a weights file naming a class twice
took its second weight."""

from __future__ import annotations

import functools
from typing import Any


def load_yaml(text: str, *, strings: bool = False) -> Any:
    """The document ``text`` holds, read as ``yaml.safe_load`` reads it (or, with ``strings``, every scalar a string,
    as ``yaml.BaseLoader`` reads it); a key given twice in one mapping raises ``yaml.YAMLError`` naming it and its
    line."""
    import yaml

    return yaml.load(text, Loader=_loader(strings))


@functools.cache
def _loader(strings: bool) -> type:
    """PyYAML's safe (or all-strings) loader, refusing a key given twice in one mapping."""
    import yaml

    base = yaml.BaseLoader if strings else yaml.SafeLoader

    class _OnceEach(base):  # type: ignore[misc,valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # "<<: *defaults": a key of its own overrides a merged one, as meant
                    key = self.construct_object(key_node, deep=True)
                    if isinstance(key, (list, dict)):
                        continue  # not hashable; PyYAML refuses it itself
                    if key in seen:
                        line = key_node.start_mark.line + 1
                        raise yaml.constructor.ConstructorError(
                            None, None, f"{key!r} is given twice (line {line})", key_node.start_mark
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return _OnceEach
