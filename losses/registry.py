"""Loss names -> plugin classes; validating a `loss:` config section (losses.loss_set builds from it).

Terms come from three places: the built-in modules of this package, the entry-point group
`utnet.losses` of installed distributions (loaded once, on first use), and the modules an
experiment lists in `loss_plugins`. An entry point may name a module whose classes register
themselves with `@register_loss`, or a `LossTerm` subclass, registered under the entry
point's name if it did not register itself.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import re
from collections.abc import Iterable, Mapping

import torch
from pydantic import ValidationError

from losses.base import LossConfig, LossTerm

ENTRY_POINT_GROUP = "utnet.losses"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")

_REGISTRY: dict[str, type[LossTerm]] = {}
_ORIGINS: dict[str, str] = {}
_BROKEN: dict[str, str] = {}  # entry-point name -> why it did not load
_entry_points_loaded = False
_loading_from: str | None = None  # what is being loaded while a registration happens


class LossRegistrationError(ValueError):
    """A loss name is taken by another class."""


class LossConfigError(ValueError):
    """An invalid `loss:` section. `problems` holds (dotted path, message, offending value) triples."""

    def __init__(self, problems: list[tuple[str, str, object]]):
        self.problems = list(problems)
        super().__init__("\n".join(f"{path}: {message} (got {value!r})" for path, message, value in self.problems))


def register_loss(name: str):
    """Class decorator: register a `LossTerm` subclass under `name`.

    Registering a name another class holds raises LossRegistrationError naming both modules
    (re-running the same module, e.g. importlib.reload, replaces its own class).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"register_loss({name!r}): a loss name is letters, digits, '_' and '-'")

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
            raise TypeError(f"register_loss({name!r}): {cls!r} is not a subclass of losses.LossTerm")
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, LossConfig)):
            raise TypeError(f"register_loss({name!r}): {_qualname(cls)}.Config must subclass losses.LossConfig")
        if cls.elementwise is LossTerm.elementwise and cls.parts is LossTerm.parts:
            raise TypeError(f"register_loss({name!r}): {_qualname(cls)} does not implement elementwise(pred, batch)")
        existing = _REGISTRY.get(name)
        if existing is not None and _qualname(existing) != _qualname(cls):
            raise LossRegistrationError(
                f"loss name '{name}' is already registered by {_qualname(existing)} (module {existing.__module__}); "
                f"{_qualname(cls)} (module {cls.__module__}) cannot register it too: choose another name")
        _REGISTRY[name] = cls
        _ORIGINS[name] = _origin(cls)
        if "plugin_name" not in cls.__dict__:
            cls.plugin_name = name
        return cls

    return decorate


def registered_losses() -> dict[str, type[LossTerm]]:
    """Every registered term, name -> class, sorted by name (loads the entry points on first call)."""
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def plugin_origin(name: str) -> str:
    """Where a registered term comes from: its module, and how that module was loaded."""
    return _ORIGINS[name]


def broken_plugins() -> dict[str, str]:
    """Entry points of the `utnet.losses` group that failed to load: name -> reason."""
    _load_entry_points()
    return dict(_BROKEN)


def import_plugin_modules(modules: Iterable[str]) -> list[tuple[str, str, object]]:
    """Import the `loss_plugins` modules; a module that fails to import is a problem on `loss_plugins`."""
    problems = []
    for module in modules or ():
        try:
            with _loading(f"loss_plugins module {module}"):
                importlib.import_module(module)
        except Exception as err:  # a plugin's own bug is a config problem too, not a traceback
            hint = " (is its directory on PYTHONPATH?)" if isinstance(err, ModuleNotFoundError) else ""
            problems.append(("loss_plugins", f"cannot import loss plugin module '{module}': "
                                             f"{type(err).__name__}: {err}{hint}", module))
    return problems


def check_loss_config(mapping: dict, plugin_modules: list[str]) -> list[tuple[str, str, object]]:
    """Validate a `loss:` section: name -> options (plus an optional `type:` naming the plugin).

    Imports `plugin_modules` first. Returns (dotted path, message, offending value) triples
    with paths like `loss.joint_3d.weight`; an empty list means the section is valid.
    """
    return _validate(mapping, plugin_modules)[1]


def resolve_loss_config(mapping: Mapping, plugin_modules: Iterable[str] = ()) -> dict[str, dict]:
    """The `loss:` section with every term's defaults filled in (and `type:` where given), JSON-ready:
    what a run should print and save. Raises LossConfigError listing every problem."""
    specs = validated_terms(mapping, plugin_modules)
    return {name: {**({"type": mapping[name]["type"]} if "type" in mapping[name] else {}),
                   **config.model_dump(mode="json")} for name, (_, config) in specs.items()}


def validated_terms(mapping: Mapping,
                    plugin_modules: Iterable[str] = ()) -> dict[str, tuple[type[LossTerm], LossConfig]]:
    """name -> (plugin class, validated config) of a `loss:` section, in its order (what `LossSet.from_config`
    builds); raises LossConfigError listing every problem."""
    specs, problems = _validate(mapping, list(plugin_modules))
    if problems:
        raise LossConfigError(problems)
    return specs


def _validate(mapping, plugin_modules) -> tuple[dict, list]:
    """(name -> (plugin class, validated config), problems) for a `loss:` section."""
    problems = import_plugin_modules(plugin_modules)
    known = registered_losses()
    if not isinstance(mapping, Mapping):
        return {}, problems + [("loss", "expected a mapping of term name -> options", mapping)]
    if not mapping:
        problems.append(("loss", f"no loss term configured; known terms: {', '.join(known)}", dict(mapping)))
    specs = {}
    for name, options in mapping.items():
        spec, term_problems = _validate_term(name, options, known)
        problems += term_problems
        if spec is not None:
            specs[name] = spec
    return specs, problems


def _validate_term(name, options, known):
    path = f"loss.{name}"
    if not isinstance(name, str) or not _NAME.fullmatch(name) or hasattr(torch.nn.ModuleDict(), name):
        return None, [(path, "a term name is letters, digits, '_' and '-' (it becomes the log key loss/<name>)", name)]
    if not isinstance(options, Mapping):
        return None, [(path, "expected a mapping of the term's options ({} for its defaults; "
                             "weight: 0 switches it off)", options)]
    options = dict(options)
    plugin_path = f"{path}.type" if "type" in options else path
    plugin_name = options.pop("type", name)
    plugin = known.get(plugin_name) if isinstance(plugin_name, str) else None
    if plugin is None:
        if plugin_name in _BROKEN:
            return None, [(plugin_path, _BROKEN[plugin_name], plugin_name)]
        hint = "" if plugin_path.endswith(".type") else " (a term may give `type:` to reuse one under another name)"
        return None, [(plugin_path, f"unknown loss term '{plugin_name}'; known: {', '.join(known)}{hint}", plugin_name)]
    try:
        return (plugin, plugin.Config.model_validate(options)), []
    except ValidationError as err:
        return None, [_problem(path, e, plugin_name, plugin) for e in err.errors()]
    except Exception as err:  # a plugin validator raising something pydantic does not wrap
        return None, [(path, f"{type(err).__name__}: {err}", options)]


def _problem(path, error, plugin_name, plugin):
    full = ".".join([path, *map(str, error["loc"])])
    message = error["msg"]
    if error["type"] == "value_error":  # a validator's own message, without pydantic's "Value error, "
        message = str(error["ctx"]["error"])
    elif error["type"] == "extra_forbidden":
        message = f"unknown option of {plugin_name}; its options: {', '.join(plugin.Config.model_fields)}"
    return full, message, error.get("input")


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        where = f"entry point '{ep.name} = {ep.value}'" + (f" of {dist.name} {dist.version}" if dist else "")
        try:
            with _loading(where):
                loaded = ep.load()
                if isinstance(loaded, type) and issubclass(loaded, LossTerm) and ep.name not in _REGISTRY:
                    register_loss(ep.name)(loaded)
        except Exception as err:  # one broken package must not take the others down
            _BROKEN[ep.name] = f"{where} ({ENTRY_POINT_GROUP}) failed to load: {type(err).__name__}: {err}"


@contextlib.contextmanager
def _loading(what: str):
    global _loading_from
    previous, _loading_from = _loading_from, what
    try:
        yield
    finally:
        _loading_from = previous


def _origin(cls) -> str:
    if cls.__module__ == "losses" or cls.__module__.startswith("losses."):
        return f"{cls.__module__} (built-in)"
    return f"{cls.__module__} ({_loading_from})" if _loading_from else cls.__module__


def _qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
