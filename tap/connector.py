"""The tap: a ``KVConnectorBase_V1`` that wraps a real connector and records every call.

``tap_class(Inner)`` makes (once per inner class) a subclass of vLLM's ``KVConnectorBase_V1`` that
mirrors ``Inner``'s capabilities at the class level, where vLLM's factory and config look for them:
``SupportsHMA`` when ``Inner`` has it (the scheduler then calls ``request_finished_all_groups``),
every classmethod (``get_required_kvcache_layout``, ``build_kv_connector_stats``, ...) delegated to
``Inner``, and ``Inner``'s class name (so vLLM's name-based checks such as
``has_connector("NixlConnector")`` see the same name). Its instance methods are generated from
the base class: each public method of ``KVConnectorBase_V1`` (plus ``request_finished_all_groups``)
becomes a forwarder that summarises its arguments *before* calling the inner connector, calls it,
and records the call (``vllm.call`` / ``vllm.request_call``) and the facts the mapping derives from
it (``tap.mapping``) into the process's ledger stream (``tap.streams``). Anything else is looked up
on the inner connector, unrecorded.

The tap changes nothing the inner connector does: same arguments, same return value, same
exception. A ledger that fails (its writer died) is logged once and recording stops; serving goes
on. This module imports vLLM: vLLM imports it (``kvledger.tap.vllm``), kvledger never does.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorRole,
    SupportsHMA,
    supports_hma,
)

from . import streams
from .mapping import CALL_MAP, MAPPING_VERSION, SCHEDULER, WORKER
from .summarize import arguments, summarize

log = logging.getLogger(__name__)

#: The vLLM version the tap's forwarders and mapping were made and tested against
#: (scripts/install-vllm-light.sh installs it). Another version logs a warning: a new connector
#: method is still forwarded (generated from the base class) but maps to nothing until mapped.
VLLM_VERSION_PINNED = "0.33.0"

#: NixlConnector's worker logs each lease it reaps; the tap attributes it to the request.
_EXPIRY_LOGGER = "vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_worker"
_EXPIRY_PREFIX = "Releasing expired KV blocks for request"

_perf_ns = time.perf_counter_ns
#: method -> the argument that names its request (a method vLLM adds later has none).
_REQUEST_ARG = {m.method: m.request_arg for m in CALL_MAP.values() if m.request_arg}


def _vllm_version() -> str:
    try:
        return version("vllm")
    except PackageNotFoundError:
        return "unknown"


# --- what the inner connector reports besides its result (a log record) ----------------------
class _Observed(threading.local):
    """Per thread: while a tap call is in progress, what the inner reported through its log."""

    active = False
    lease_expired: dict[str, int] | None = None


_observed = _Observed()


class _ExpiryHandler(logging.Handler):
    """Catches NixlConnector's lease-expiry warning during a tap call in the same thread."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _observed.active or not str(record.msg).startswith(_EXPIRY_PREFIX):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 2:
            if _observed.lease_expired is None:
                _observed.lease_expired = {}
            _observed.lease_expired[str(args[0])] = int(args[1])


_handler_lock = threading.Lock()
_handler: _ExpiryHandler | None = None


def _install_expiry_handler() -> None:
    global _handler
    with _handler_lock:
        if _handler is None:
            _handler = _ExpiryHandler(logging.WARNING)
            logging.getLogger(_EXPIRY_LOGGER).addHandler(_handler)


# --- the base of every tap class ---------------------------------------------------------------
class _TapBase(KVConnectorBase_V1):
    """Shared by the generated tap classes; ``_inner_cls`` is set on each."""

    _inner_cls: type[KVConnectorBase_V1]

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        self._inner = self._inner_cls(vllm_config, role, kv_cache_config)
        self._side = SCHEDULER if role == KVConnectorRole.SCHEDULER else WORKER
        self._broken = False
        #: per-layer hook -> [layer names in call order, summed ns, first extra argument]
        self._layers: dict[str, list] = {}
        ktc = vllm_config.kv_transfer_config
        cfg = dict((ktc.kv_connector_extra_config or {}).get("kvledger") or {})
        target = cfg.get("ledger") or os.environ.get("KVLEDGER_TAP_LEDGER")
        if not target:
            raise ValueError("kvledger tap: set kv_connector_extra_config['kvledger']['ledger'] "
                             "(a folder or a SQLAlchemy URL) or KVLEDGER_TAP_LEDGER")
        vv = _vllm_version()
        if vv != VLLM_VERSION_PINNED:
            log.warning("kvledger tap: made for vLLM %s, running on %s", VLLM_VERSION_PINNED, vv)
        name = streams.stream_name(cfg.get("stream") or streams.STREAM_DEFAULT,
                                   engine_id=str(ktc.engine_id), kv_role=ktc.kv_role)
        config = {
            "tap_mapping_version": MAPPING_VERSION, "vllm_version": vv,
            "inner": f"{self._inner_cls.__module__}.{self._inner_cls.__qualname__}",
            "kv_connector": ktc.kv_connector, "engine_id": str(ktc.engine_id),
            "kv_role": ktc.kv_role, "pid": os.getpid(),
            "num_blocks": getattr(kv_cache_config, "num_blocks", None),
        }
        self._stream: streams.SharedStream | None = streams.acquire(
            str(target), name, role=streams.ROLES.get(ktc.kv_role or "", "vllm"), config=config,
            group_ms=int(cfg.get("group_ms") or streams.GROUP_MS_DEFAULT),
            synchronous=str(cfg.get("synchronous") or streams.SYNCHRONOUS_DEFAULT))
        if self._side == WORKER:
            _install_expiry_handler()

    # Properties of the inner connector (vLLM reads them on the instance).
    @property
    def supports_divergent_local_hybrid_hits(self) -> bool:
        return self._inner.supports_divergent_local_hybrid_hits

    @property
    def requires_kv_delivery(self) -> bool:
        return self._inner.requires_kv_delivery

    @property
    def inner(self) -> KVConnectorBase_V1:
        """The wrapped connector."""
        return self._inner

    @property
    def ledger_stream(self) -> str | None:
        return None if self._stream is None else self._stream.key[1]

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the tap does not define: the inner connector's own.
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    # -- recording ---------------------------------------------------------------------------
    def _record(self, method: str, a: dict[str, Any], res: Any, dur_ns: int,
                error: str | None, observed: dict[str, Any] | None) -> None:
        s = self._stream
        if s is None or self._broken:
            return
        try:
            r = summarize(res) if error is None else None
            rid = None
            req_arg = _REQUEST_ARG.get(method)
            if req_arg is not None:
                req = a.get(req_arg)
                rid = req.get("request_id") if isinstance(req, dict) else None
            emit = s.ledger.emit
            with s.lock:
                emit("vllm.request_call" if rid is not None else "vllm.call", rid,
                     method=method, side=self._side, args=a, result={"value": r},
                     dur_ns=dur_ns, error=error, observed=observed)
                if error is None:
                    for kind, erid, attrs in s.mapper.on_call(self._side, method, a, r,
                                                              observed):
                        emit(kind, erid, **attrs)
        except Exception:  # noqa: BLE001 - the ledger must never take the engine down
            self._broken = True
            log.exception("kvledger tap: recording into stream %s failed; recording stops "
                          "for this connector", s.key[1])

    def _flush_layers(self) -> None:
        """One call record per per-layer hook for the calls since the last flush."""
        layers, self._layers = self._layers, {}
        for name, (names, dur, first) in layers.items():
            a = {"layer_names": names, "calls": len(names)}
            if first is not None:
                a["first_kv_layer"] = summarize(first)
            self._record(name, a, None, dur, None, None)

    def _close_stream(self) -> None:
        s, self._stream = self._stream, None
        if s is not None:
            try:
                streams.release(s)
            except Exception:  # noqa: BLE001 - shutdown goes on
                log.exception("kvledger tap: closing stream %s failed", s.key[1])


def _forwarder(name: str, params: tuple[str, ...]) -> Any:
    """The generated method ``name``: summarise arguments, call the inner, record."""

    def forward(self: _TapBase, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(self._inner, name)
        if self._stream is None or self._broken:
            return inner(*args, **kwargs)
        if self._layers:
            self._flush_layers()
        a = arguments(params, args, kwargs)  # before the call: the inner mutates its inputs
        obs = _observed
        outer = obs.active
        if not outer:
            obs.active, obs.lease_expired = True, None
        t0 = _perf_ns()
        try:
            res = inner(*args, **kwargs)
        except BaseException as exc:
            dur = _perf_ns() - t0
            if not outer:
                obs.active = False
            self._record(name, a, None, dur, f"{type(exc).__name__}: {exc}", None)
            raise
        dur = _perf_ns() - t0
        observed = None
        if not outer:
            obs.active = False
            if obs.lease_expired:
                observed = {"lease_expired": obs.lease_expired}
                obs.lease_expired = None
        self._record(name, a, res, dur, None, observed)
        if name == "shutdown":
            self._close_stream()
        return res

    forward.__name__ = forward.__qualname__ = name
    return forward


#: Called by the attention layers once per layer per step (2 x layers calls a step): recorded as
#: one call record per hook per step, naming the layers in call order, the number of calls and
#: their summed duration, written before the worker's next other call (or its error, or
#: shutdown). One event a call would cost a 32-layer model ~64 ledger events a step.
LAYER_HOOKS = ("wait_for_layer_load", "save_kv_layer")


def _layer_forwarder(name: str) -> Any:
    """The generated per-layer hook: call the inner, remember (layer, duration); no event."""

    def forward(self: _TapBase, layer_name: str, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(self._inner, name)
        if self._stream is None or self._broken:
            return inner(layer_name, *args, **kwargs)
        t0 = _perf_ns()
        try:
            res = inner(layer_name, *args, **kwargs)
        except BaseException as exc:
            dur = _perf_ns() - t0
            self._flush_layers()
            self._record(name, arguments(FORWARDED[name], (layer_name, *args), kwargs), None,
                         dur, f"{type(exc).__name__}: {exc}", None)
            raise
        acc = self._layers.get(name)
        if acc is None:
            acc = self._layers[name] = [[], 0, args[0] if args else None]
        acc[0].append(layer_name)
        acc[1] += _perf_ns() - t0
        return res

    forward.__name__ = forward.__qualname__ = name
    return forward


def _public_methods(cls: type) -> dict[str, tuple[str, ...]]:
    """Public plain methods defined on ``cls`` -> their parameter names (without self)."""
    out = {}
    for name, v in cls.__dict__.items():
        if name.startswith("_") or not inspect.isfunction(v):
            continue
        ps = list(inspect.signature(v).parameters.values())[1:]
        out[name] = tuple(p.name for p in ps if p.kind in (p.POSITIONAL_ONLY,
                                                            p.POSITIONAL_OR_KEYWORD))
    return out


#: The forwarded methods, generated from vLLM's base classes (a test checks each has a row in
#: ``mapping.CALL_MAP``; a method vLLM adds is forwarded and recorded even before it is mapped).
FORWARDED: dict[str, tuple[str, ...]] = _public_methods(KVConnectorBase_V1)
HMA_FORWARDED: dict[str, tuple[str, ...]] = _public_methods(SupportsHMA)
CLASSMETHODS: tuple[str, ...] = tuple(
    n for n, v in KVConnectorBase_V1.__dict__.items() if isinstance(v, classmethod))

for _name, _params in FORWARDED.items():
    setattr(_TapBase, _name, _layer_forwarder(_name) if _name in LAYER_HOOKS
            else _forwarder(_name, _params))
_TapBase.__abstractmethods__ = frozenset()


def _delegate_classmethod(inner_cls: type, name: str) -> classmethod:
    def call(cls: type, *args: Any, **kwargs: Any) -> Any:
        return getattr(inner_cls, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return classmethod(call)


_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def tap_class(inner_cls: type[KVConnectorBase_V1]) -> type[KVConnectorBase_V1]:
    """The tap class of ``inner_cls`` (made once): same name, same HMA support, same
    classmethods, every call recorded."""
    with _classes_lock:
        cls = _classes.get(inner_cls)
        if cls is not None:
            return cls
        ns: dict[str, Any] = {
            "_inner_cls": inner_cls,
            "__module__": "kvledger.tap.vllm",
            "__qualname__": inner_cls.__name__,
            "__doc__": f"kvledger tap around {inner_cls.__module__}.{inner_cls.__qualname__}.",
            "_cache_hit_source": getattr(inner_cls, "_cache_hit_source", None),
        }
        for name in CLASSMETHODS:
            ns[name] = _delegate_classmethod(inner_cls, name)
        bases: tuple[type, ...] = (_TapBase,)
        if supports_hma(inner_cls):
            bases = (_TapBase, SupportsHMA)
            for name, params in HMA_FORWARDED.items():
                ns[name] = _forwarder(name, params)
        cls = type(inner_cls.__name__, bases, ns)
        cls.__abstractmethods__ = frozenset()
        _classes[inner_cls] = cls
        return cls


def is_tap(obj: Any) -> bool:
    return isinstance(obj, _TapBase)
