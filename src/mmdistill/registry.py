"""Name -> builder registries with an options model per entry, shared by encoders, fusions,
heads, teacher-ensemble strategies, optimisers, schedulers, datasets, losses and model kinds.

Usage::

    ENCODERS = Registry("encoder")

    class WideOptions(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
        width: int = 64

    @ENCODERS.register("wide", options=WideOptions)
    class WideEncoder(nn.Module): ...

    ENCODERS.get("wide")      # -> WideEncoder; unknown names raise ConfigError listing the known ones
    ENCODERS.options("wide")  # -> WideOptions
    ENCODERS.parse({"type": "wide", "width": 8})  # -> validated options (with ``type``)

A config entry names its entry by the registry's ``key`` (``type`` for encoders, ``name`` for
optimisers, ...). :meth:`Registry.parse` validates the entry's other keys against the entry's
options model; when that model has no field named ``key``, a subclass adding it is used, so the
validated options keep the name they were selected by. :meth:`Registry.field` is the pydantic
type of such an entry inside a config section; its errors name the key
(``model.encoders.audio.widht: unknown key``).
"""
from __future__ import annotations

from typing import Annotated, Any, Callable, Generic, Iterator, Literal, TypeVar

import pydantic
from pydantic import BaseModel, BeforeValidator, SerializeAsAny

from .errors import ConfigError
from .options import format_validation_error

T = TypeVar("T")


class Registry(Generic[T]):
    """``kind`` names the registry in messages; config entries select an entry by ``key``, or by
    ``default`` when they leave it out."""

    def __init__(self, kind: str, *, key: str = "type", default: str | None = None):
        self.kind = kind
        self.key = key
        self.default = default
        self._items: dict[str, T] = {}
        self._options: dict[str, type[BaseModel] | None] = {}
        self._entry_models: dict[str, type[BaseModel]] = {}

    def register(self, name: str, *, options: type[BaseModel] | None = None,
                 overwrite: bool = False) -> Callable[[T], T]:
        """Decorator registering a builder under ``name`` with its ``options`` model (a pydantic
        model, ``extra="forbid"`` so that a typo is an error; None: the entry takes no options)."""
        if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise TypeError(f"{self.kind} {name!r}: options must be a pydantic BaseModel subclass")

        def decorator(obj: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            self._options[name] = options
            self._entry_models.pop(name, None)
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {self._known()})") from None

    def options(self, name: str) -> type[BaseModel] | None:
        """The options model entry ``name`` was registered with (None: it takes no options)."""
        self.get(name)
        return self._options.get(name)

    def _known(self) -> str:
        return ", ".join(sorted(self._items)) or "none"

    def entry_model(self, name: str) -> type[BaseModel]:
        """The model a config entry of ``name`` is validated with: its options model, with a
        ``key`` field (``type: Literal[name]``) added when the options model has none."""
        if name not in self._entry_models:
            options = self.options(name)
            if options is not None and self.key in options.model_fields:
                model = options
            else:
                base = options or _NoOptions
                model = pydantic.create_model(base.__name__, __base__=base,
                                              **{self.key: (Literal[name], name)})  # type: ignore[call-overload]
            self._entry_models[name] = model
        return self._entry_models[name]

    def parse(self, raw: Any) -> BaseModel:
        """Validate a config entry (a mapping naming the entry by ``key``) against its options.

        Raises ``ValueError("subkey: message")`` (inside a pydantic validator this becomes an
        error naming the full key); an already validated entry is returned as it is."""
        if isinstance(raw, BaseModel):
            name = getattr(raw, self.key, None)
            if isinstance(name, str) and name in self._items and isinstance(raw, self.entry_model(name)):
                return raw
            raw = raw.model_dump()
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping with {self.key!r} naming the {self.kind} (got {raw!r})")
        name = raw.get(self.key, self.default)
        if name is None:
            raise ValueError(f"{self.key}: missing; name the {self.kind} (known: {self._known()})")
        if not isinstance(name, str) or name not in self._items:
            raise ValueError(f"{self.key}: unknown {self.kind} {name!r} (known: {self._known()})")
        try:
            return self.entry_model(name).model_validate({**raw, self.key: name})
        except pydantic.ValidationError as err:
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


class _NoOptions(BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)


def options_of(entry: BaseModel, key: str) -> dict[str, Any]:
    """The options of a validated entry as keyword arguments: every field but the ``key`` one."""
    return {k: getattr(entry, k) for k in type(entry).model_fields if k != key}
