"""Name -> builder registries with an options model per entry, shared by encoders, fusions,
heads, teacher-ensemble strategies, optimisers, schedulers, datasets, losses and model kinds.

One way to register, in every registry: ``@REGISTRY.register(name, options=None)``. Without
``options`` the options model is read from the builder's signature, so nothing is stated twice::

    ENCODERS = Registry("encoder", builder_args=1)      # built as cls(shape, **options)

    @ENCODERS.register("wide")
    class WideEncoder(nn.Module):
        def __init__(self, shape, width: int = 64): ...  # options model: {width: int = 64}

    ENCODERS.get("wide")      # -> WideEncoder; unknown names raise ConfigError listing the known ones
    ENCODERS.options("wide")  # -> the options model
    ENCODERS.parse({"type": "wide", "width": 8})  # -> validated options (with ``type``)

A registry calls its builders in one of two ways, fixed when it is created:

* ``builder(*args, **options)`` (``builder_args``: how many leading arguments the caller gives,
  e.g. an encoder's ``shape``): the options model is made from the remaining named parameters,
  their annotations and defaults (unannotated ones take any value);
* ``builder(..., options, ...)`` (``options_arg``: the position of the validated options model,
  e.g. a dataset's ``builder(root, options, seed)``): the options model is that parameter's
  annotation, which must be a pydantic model.

Pass ``options=`` to give constraints the signature cannot say (``Field(gt=0)``, validators).

A config entry names its entry by the registry's ``key`` (``type`` for encoders, ``name`` for
optimisers, ...; model kinds are told apart by which of their keys the section holds, see
``select``). :meth:`Registry.parse` and :meth:`Registry.validate` are the one validation path:
``parse`` takes the whole entry, ``validate`` a name and its options. Their errors name the key
(``model.encoders.audio.widht: unknown key (encoder 'conv' takes: channels, ...)``).
:meth:`Registry.field` is the pydantic type of such an entry inside a config section. ``mmdistill
list`` prints the library's registries by their ``group``.
"""
from __future__ import annotations

import inspect
from typing import Annotated, Any, Callable, Generic, Iterator, Literal, Mapping, TypeVar

import pydantic
from pydantic import BaseModel, BeforeValidator, SerializeAsAny

from .errors import ConfigError
from .options import format_validation_error

T = TypeVar("T")


class Registry(Generic[T]):
    """``kind`` names the registry in messages and ``group`` (its plural) in ``mmdistill list``; config
    entries select an entry by ``key``, or by ``default`` when they leave it out; ``select``
    (a function of the raw entry, for registries without a ``key``) picks the name instead.
    ``builder_args``/``options_arg``: how builders are called (see the module docstring).
    ``base``: a class every entry must subclass."""

    def __init__(self, kind: str, *, group: str | None = None, key: str | None = "type", default: str | None = None,
                 select: Callable[[Any], str] | None = None, builder_args: int = 0, options_arg: int | None = None,
                 base: type | None = None):
        self.kind = kind
        self.group = group or f"{kind}s"
        self.key = key
        self.default = default
        self.select = select
        self.builder_args = builder_args
        self.options_arg = options_arg
        self.base = base
        self._items: dict[str, T] = {}
        self._options: dict[str, type[BaseModel]] = {}
        self._entry_models: dict[str, type[BaseModel]] = {}

    def register(self, name: str, options: type[BaseModel] | None = None, *,
                 overwrite: bool = False) -> Callable[[T], T]:
        """Decorator registering a builder under ``name`` with its ``options`` model (a pydantic
        model, ``extra="forbid"`` so that a typo is an error); None: read from the builder's
        signature (see the module docstring)."""
        if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise TypeError(f"{self.kind} {name!r}: options must be a pydantic BaseModel subclass")

        def decorator(obj: T) -> T:
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise TypeError(f"{self.kind} {name!r}: expected a {self.base.__name__} subclass, got {obj!r}")
            if name in self._items and not overwrite and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._options[name] = options or self._signature_options(name, obj)
            self._items[name] = obj
            self._entry_models.pop(name, None)
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove entry ``name`` (tests, or a module loaded again); an unknown name is ignored."""
        for table in (self._items, self._options, self._entry_models):
            table.pop(name, None)

    def _signature_options(self, name: str, obj: Any) -> type[BaseModel]:
        """The options model ``obj``'s signature states (see the module docstring)."""
        params = list(_parameters(obj.__init__ if isinstance(obj, type) else obj))
        if isinstance(obj, type):
            params = params[1:]  # self
        if self.options_arg is not None:
            param = params[self.options_arg] if len(params) > self.options_arg else None
            model = param.annotation if param is not None else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                where = f"parameter {param.name!r}" if param is not None else f"argument {self.options_arg}"
                raise TypeError(f"{self.kind} {name!r}: annotate {where} with its pydantic options model, "
                                f"or pass options=")
            return model
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        fields = {p.name: (Any if p.annotation is inspect.Parameter.empty else p.annotation,
                           ... if p.default is inspect.Parameter.empty else p.default)
                  for p in params[self.builder_args:] if p.kind in named}
        title = getattr(obj, "__name__", name)
        return pydantic.create_model(f"{title}Options",
                                     __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True,
                                                                    allow_inf_nan=False),
                                     **fields)  # type: ignore[call-overload]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {self._known()})") from None

    def options(self, name: str) -> type[BaseModel]:
        """The options model of entry ``name``."""
        self.get(name)
        return self._options[name]

    def option_names(self, name: str) -> list[str]:
        """The options entry ``name`` takes (its ``key`` left out)."""
        return [k for k in self.options(name).model_fields if k != self.key]

    def _known(self) -> str:
        return ", ".join(sorted(self._items)) or "none"

    def entry_model(self, name: str) -> type[BaseModel]:
        """The model a config entry of ``name`` is validated with: its options model, with a
        ``key`` field (``type: Literal[name]``) added when the options model has none."""
        if name not in self._entry_models:
            options = self.options(name)
            if self.key is None or self.key in options.model_fields:
                model = options
            else:
                model = pydantic.create_model(options.__name__, __base__=options,
                                              **{self.key: (Literal[name], name)})  # type: ignore[call-overload]
            self._entry_models[name] = model
        return self._entry_models[name]

    def _name_of(self, raw: Any) -> str:
        if self.select is not None:
            return self.select(raw)
        name = raw.get(self.key, self.default) if isinstance(raw, dict) else getattr(raw, self.key, None)
        if name is None:
            raise ValueError(f"{self.key}: missing; name the {self.kind} (known: {self._known()})")
        if not isinstance(name, str) or name not in self._items:
            raise ValueError(f"{self.key}: unknown {self.kind} {name!r} (known: {self._known()})")
        return name

    def parse(self, raw: Any) -> BaseModel:
        """Validate a config entry (a mapping naming the entry by ``key``) against its options.

        Raises ``ValueError("subkey: message")`` (inside a pydantic validator this becomes an
        error naming the full key); an already validated entry is returned as it is."""
        if isinstance(raw, BaseModel):
            try:
                name = self._name_of(raw)
            except ValueError:
                if self.select is not None:  # not the options of any entry
                    raise
                name = None
            if name is not None and isinstance(raw, self.entry_model(name)):
                return raw
            raw = raw.model_dump()
        if not isinstance(raw, dict) and self.select is None:
            raise ValueError(f"expected a mapping with {self.key!r} naming the {self.kind} (got {raw!r})")
        name = self._name_of(raw)
        return self._validate(name, self.entry_model(name), raw if self.key is None else {**raw, self.key: name})

    def validate(self, name: str, options: Mapping[str, Any] | None = None, where: str | None = None) -> BaseModel:
        """``options`` (an entry's options, without its ``key``) validated against entry ``name``'s
        options model; nothing is built.

        Raises ``ValueError("option: message")``, or with ``where`` a :class:`ConfigError` naming
        ``where.option`` (``distill.terms[0].temperatur: unknown key (loss 'kd' takes: temperature)``)."""
        try:
            if name not in self._items:
                raise ValueError(f"{self.key or 'name'}: unknown {self.kind} {name!r} (known: {self._known()})")
            model = self.options(name)
            data = dict(options or {})
            if self.key is not None and self.key in model.model_fields:
                data[self.key] = name
            return self._validate(name, model, data)
        except ValueError as err:
            if where is None:
                raise
            raise ConfigError(f"{where}.{err}") from None

    def _validate(self, name: str, model: type[BaseModel], data: dict) -> BaseModel:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            if first["type"] == "extra_forbidden" and len(first["loc"]) == 1:
                takes = ", ".join(self.option_names(name)) or "no options"
                raise ValueError(f"{first['loc'][0]}: unknown key ({self.kind} {name!r} takes: {takes})") from None
            raise ValueError(format_validation_error(err)) from None

    def field(self) -> Any:
        """The pydantic type of one entry inside a config section (validated by :meth:`parse`;
        dumped with every option of its own model)."""
        return Annotated[SerializeAsAny[BaseModel], BeforeValidator(self.parse)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


def _parameters(fn: Callable) -> list[inspect.Parameter]:
    """``fn``'s parameters, string annotations resolved (``from __future__ import annotations``);
    an annotation that does not evaluate is dropped (any value)."""
    try:
        return list(inspect.signature(fn, eval_str=True).parameters.values())
    except Exception:
        return [p.replace(annotation=inspect.Parameter.empty) for p in inspect.signature(fn).parameters.values()]


def options_of(entry: BaseModel, key: str | None) -> dict[str, Any]:
    """The options of a validated entry as keyword arguments: every field but the ``key`` one."""
    return {k: getattr(entry, k) for k in type(entry).model_fields if k != key}
