"""`utnet plugins`: every registered loss term, where it comes from, and its config fields."""
from __future__ import annotations

import inspect
import json
import typing

import losses
from utnet.commands.common import add_config_arguments, config_from_args

HELP = "list the registered loss terms with their origin and config fields (types, defaults)"


def add_arguments(parser):
    add_config_arguments(parser)  # the config's loss_plugins are imported, so their terms are listed too
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args) -> int:
    config_from_args(args)
    terms = [_describe(name, plugin) for name, plugin in losses.registered_losses().items()]
    broken = losses.broken_plugins()
    if args.json:
        print(json.dumps({"terms": terms, "broken": broken}, indent=2, default=repr))
        return 0
    for term in terms:
        print(f"{term['name']}  ({term['origin']}; class {term['class']})")
        if term["doc"]:
            print(f"    {term['doc']}")
        width = max(len(f["name"]) for f in term["fields"])
        for field in term["fields"]:
            line = f"    {field['name']:<{width}}  {field['type']}, default {field['default']!r}"
            print(line + (f": {field['description']}" if field["description"] else ""))
        print()
    for name, reason in broken.items():
        print(f"{name}  NOT LOADED: {reason}")
    print(f"Use a term in the `loss:` section of an experiment YAML: <name>: {{weight: ..., reduction: ...}}; "
          f"`type: <name>` reuses a term under another name. Add terms through the entry-point group "
          f"'{losses.ENTRY_POINT_GROUP}' or the config key loss_plugins.")
    return 0


def _describe(name: str, plugin) -> dict:
    doc = inspect.getdoc(plugin) or ""
    return {
        "name": name,
        "class": f"{plugin.__module__}.{plugin.__qualname__}",
        "origin": losses.plugin_origin(name),
        "doc": " ".join(doc.split("\n\n")[0].split()),
        "fields": [
            {"name": key, "type": _type_text(field), "default": field.get_default(call_default_factory=True),
             "description": field.description or ""}
            for key, field in plugin.Config.model_fields.items()
        ],
    }


def _type_text(field) -> str:
    text = _annotation_text(field.annotation)
    bounds = [f"{symbol} {getattr(m, attr)}" for m in field.metadata
              for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if getattr(m, attr, None) is not None]
    bounds += [f"min length {m.min_length}" for m in field.metadata if getattr(m, "min_length", None)]
    return " ".join([text, ", ".join(bounds)]) if bounds else text


def _annotation_text(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return _annotation_text(args[0])
    if origin is typing.Union:
        return " | ".join(_annotation_text(a) for a in args)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_annotation_text(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
