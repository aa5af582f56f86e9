"""The configuration reference (the Markdown table the README carries), generated from the models."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ByteSize

from flows.settings.models import Settings
from flows.settings.types import format_duration


def _type_name(annotation: Any) -> str:
    from typing import Annotated, get_args, get_origin

    if get_origin(annotation) is Annotated:  # constrained types read as their base type
        return _type_name(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return " or ".join(str(a) for a in get_args(annotation))
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and len(get_args(annotation)) == 2:
        return _type_name(args[0]) + " (optional)"
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = re.sub(r"typing\.|pydantic\.types\.|pathlib\.|datetime\.|flows\.settings\.(?:\w+\.)?", "", str(text))
    return {"timedelta": "duration", "ByteSize": "size"}.get(text, text)


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The section model inside a field type, and how its keys are written (list item, map value)."""
    from typing import get_args, get_origin

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], ".<key>"
    return None, ""


def _default_text(field: Any) -> str:
    from pydantic import TypeAdapter
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, timedelta):
        value = format_duration(value)
    elif isinstance(value, ByteSize):
        value = value.human_readable(separator="")
    else:
        value = TypeAdapter(field.annotation).dump_python(value, mode="json")
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "see dataflows.yaml"
    shown = value if isinstance(value, str) else json.dumps(value)
    return f"`{shown}`".replace("|", "\\|")


def reference_rows(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every leaf key, in declaration order."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        inner, suffix = _model_in(field.annotation)
        if inner is not None:
            if suffix:
                rows.append((key, "list" if suffix == "[]" else "map", _default_text(field),
                             field.description or ""))
            rows.extend(reference_rows(inner, f"{key}{suffix}."))
            continue
        rows.append((key, _type_name(field.annotation), _default_text(field), field.description or ""))
    return rows


def reference_markdown() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, description in reference_rows():
        lines.append(f"| `{key}` | {kind.replace('|', chr(92) + '|')} | {default} | {description} |")
    return "\n".join(lines) + "\n"
