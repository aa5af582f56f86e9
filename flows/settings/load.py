"""Reading the configuration: which file, YAML with no key given twice, the environment on top,
and every error turned into a message naming the key (`kafka.partitions: ...`)."""

from __future__ import annotations

import collections.abc
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from flows.settings.models import ENV_PREFIX, Settings
from flows.settings.types import ConfigError

CONFIG_ENV = "WAXFLOW_CONFIG"
DEFAULT_CONFIG = Path("dataflows.yaml")


def config_path(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """The file to read and whether someone asked for it (a missing asked-for file is an error)."""
    if explicit:
        return Path(explicit), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), True
    return DEFAULT_CONFIG, False


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML keeps the last
    one silently, so the first would be ignored without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` keys may be overridden by the mapping's own
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def _read_yaml(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"{path}: configuration file not found")
        return {}
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "[")):
            continue  # pydantic's validator wrappers and markers, not keys
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += ("." if out else "") + str(part)
        else:
            out += f"[{str(part)!r}]"  # a mapping key such as a subnet
    return out or "(top level)"


def describe_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in err.errors():
        key = _key(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        got = item.get("input")
        quiet = isinstance(got, (dict, list)) or item["type"] in ("extra_forbidden", "value_error")
        shown = "" if quiet else f" (got {got!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def unknown_environment_keys(environ: Any) -> list[str]:
    """`WAXFLOW__...` variables that name no setting (pydantic-settings would ignore them, so a
    typo would silently leave the default in place). Free-form mappings end the walk."""
    from typing import get_args

    unknown = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        model: Any = Settings
        for part in name[len(ENV_PREFIX):].lower().split("__"):
            fields = {key.lower(): field for key, field in model.model_fields.items()}
            if part not in fields:
                unknown.append(name)
                break
            annotation = fields[part].annotation
            nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)
                      and issubclass(a, BaseModel)]
            if not nested:
                break  # a value, or a free-form mapping/list: the model validates the rest
            model = nested[0]
    return unknown


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the configuration; raise ConfigError naming every bad key."""
    file, required = config_path(path)
    data = _read_yaml(file, required)
    unknown = unknown_environment_keys(os.environ)
    if unknown:
        raise ConfigError(f"environment ({ENV_PREFIX}...): invalid configuration\n"
                          + "\n".join(f"  {name}: unknown key" for name in unknown))
    try:
        return Settings(**data)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, str(file))) from None
    except SettingsError as err:
        # Raised for an environment value that is not valid JSON where a structure is expected.
        raise ConfigError(f"environment ({ENV_PREFIX}...): {err}") from None
