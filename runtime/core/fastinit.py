"""``fast_init``: a cheaper ``__init__`` for the frozen, slotted dataclasses of the hot path.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__(self,
name, value)``: two type lookups and the generic attribute machinery per field, to get past the
frozen ``__setattr__``. The core builds ~30 such inputs, effects and messages per request, and
that was ~5% of its cost. The ``__init__`` made here writes each field through its slot's own
descriptor (``Cls.field.__set__``), the very store ``object.__setattr__`` ends in, at less than
half the cost. Same signature (names, order, defaults), same instances: equality, hashing, repr,
``dataclasses.replace`` and the frozen ``__setattr__`` are the dataclass's own, untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


def fast_init(cls: T) -> T:
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen and "__slots__" in cls.__dict__, f"{cls.__name__}: frozen, slots only"
    assert not hasattr(cls, "__post_init__"), f"{cls.__name__}: __post_init__ not supported"
    ns: dict[str, Any] = {}
    args, body = [], []
    for i, f in enumerate(dataclasses.fields(cls)):
        assert f.init and f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name}"
        ns[f"_set{i}"] = cls.__dict__[f.name].__set__
        if f.default is dataclasses.MISSING:
            args.append(f.name)
        else:
            ns[f"_default{i}"] = f.default
            args.append(f"{f.name}=_default{i}")
        body.append(f"    _set{i}(self, {f.name})")
    src = f"def __init__(self, {', '.join(args)}):\n" + "\n".join(body or ["    pass"])
    exec(src, ns)  # noqa: S102 - code built from the class's own field names
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc]
    return cls
