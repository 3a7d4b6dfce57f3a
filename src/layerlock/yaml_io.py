"""Reading YAML that a user wrote: bounded in size, depth and expansion, keys given once.

``yaml.safe_load`` builds no arbitrary objects, but it still expands aliases: a few hundred
bytes of nested ``*a`` references become gigabytes of lists (the "billion laughs"). A
layerlock config has no use for aliases, so :func:`load_yaml` refuses them, along with
files over :data:`MAX_YAML_BYTES`, nesting deeper than :data:`MAX_YAML_DEPTH`, a key given
twice in one mapping (YAML keeps the last one silently) and text that is not UTF-8.
Every refusal is one :class:`~layerlock.errors.ConfigError` line naming the source and,
where it has one, the line.

Example:
    >>> load_yaml("run: {epochs: 3}", "config file a.yaml")
    {'run': {'epochs': 3}}
    >>> load_yaml("a: 1\\na: 2", "config file a.yaml")
    Traceback (most recent call last):
    ...
    layerlock.errors.ConfigError: config file a.yaml line 2: key 'a' is given twice (first on line 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "decode_text", "load_yaml", "read_yaml"]

#: Larger YAML input is refused (a config is a few KiB).
MAX_YAML_BYTES = 1024 * 1024
#: Deeper nesting of mappings and lists is refused (a config nests three levels).
MAX_YAML_DEPTH = 32


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` without aliases, with a depth limit and no repeated keys."""

    source = "YAML"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _refusal(
                self,
                event.start_mark,
                f"aliases (*{event.anchor}) are not supported; write the value out",
            )
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _refusal(
                self,
                self.peek_event().start_mark,
                f"nested more than {MAX_YAML_DEPTH} levels deep",
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in first:
                    raise _refusal(
                        self,
                        key_node.start_mark,
                        f"key {_short(key)} is given twice (first on line {first[key]})",
                    )
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def _short(value: Any) -> str:
    from .errors import shorten

    return shorten(value)


def _refusal(loader: _BoundedLoader, mark: Any, what: str) -> ConfigError:
    return ConfigError(f"{loader.source} line {mark.line + 1}: {what}")


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text`` safely and within bounds; ``source`` names it in messages.

    Raises:
        ConfigError: Too large, too deep, an alias, a repeated key or a syntax error,
            naming ``source`` and the line.

    Example:
        >>> load_yaml("[1, 2]", "override")
        [1, 2]
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{source} is {size:,} bytes; YAML input is limited to {MAX_YAML_BYTES:,} bytes"
        )
    loader = _BoundedLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source} is not valid YAML ({where}{what})") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: nested too deeply") from exc
    finally:
        loader.dispose()


def decode_text(
    data: bytes, source: str, encoding: str = "utf-8", *, nul_is_binary: bool = True
) -> str:
    """``data`` decoded as ``encoding`` (a UTF-8 byte-order mark is dropped).

    Args:
        data: The bytes.
        source: Names the data in messages (``"config file a.yaml"``).
        encoding: The text encoding expected.
        nul_is_binary: Refuse NUL bytes in the first 8 KiB as binary data (callers that
            report NUL characters by line pass False).

    Raises:
        ConfigError: Binary data (NUL bytes) or bytes that are not ``encoding`` text,
            naming ``source``, the offset and the expected encoding.

    Example:
        >>> decode_text(b"\\xff\\xfe", "config file a.yaml")
        Traceback (most recent call last):
        ...
        layerlock.errors.ConfigError: config file a.yaml is not utf-8 text (byte 0xff at offset 0); save it as utf-8
    """
    nul = data.find(b"\x00", 0, 8192)
    if nul_is_binary and nul >= 0 and not encoding.lower().startswith("utf-16"):
        raise ConfigError(
            f"{source} is a binary file (NUL byte at offset {nul}), not {encoding} text"
        )
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source} is not {encoding} text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as {encoding}"
        ) from None
    except LookupError:
        raise ConfigError(f"unknown text encoding {encoding!r} for {source}") from None


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Read and parse the YAML file ``path`` within bounds (see :func:`load_yaml`).

    Raises:
        ConfigError: A missing file, a folder, too large a file, binary or non-UTF-8
            content, or anything :func:`load_yaml` refuses.

    Example:
        >>> read_yaml("run.yaml")  # doctest: +SKIP
    """
    path = Path(path)
    source = f"{what} {path}"
    if path.is_dir():
        raise ConfigError(f"{source} is a folder, not a file")
    if not path.is_file():
        exists = path.exists()
        raise ConfigError(
            f"{source} is not a regular file" if exists else f"{source} does not exist"
        )
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{source} is {size:,} bytes; config files are limited to {MAX_YAML_BYTES:,} bytes"
        )
    try:
        data = path.read_bytes()[: MAX_YAML_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    return load_yaml(decode_text(data, source), source)
