"""The module vLLM loads: ``kv_connector_module_path="kvledger.tap.vllm"``.

vLLM's connector factory imports this module and takes the attribute named by ``kv_connector``.
Each name vLLM's own registry knows (``NixlConnector``, ``NixlPushConnector``, ``MultiConnector``,
``OffloadingConnector``, ...) is answered with the tap around that connector (``tap_class``), so a
deployment turns the tap on by adding the module path and the ledger target, keeping its connector
name::

    --kv-transfer-config '{"kv_connector": "NixlConnector", "kv_role": "kv_producer",
        "kv_connector_module_path": "kvledger.tap.vllm",
        "kv_connector_extra_config": {"kvledger": {"ledger": "/var/log/kvledger"}}}'

A connector that is itself loaded by module path is tapped with a two-line module of your own::

    from kvledger.tap.connector import tap_class
    from my.connectors import MyConnector as _Inner
    MyConnector = tap_class(_Inner)
"""

from __future__ import annotations

from typing import Any

from .connector import tap_class


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    try:
        inner = KVConnectorFactory.get_connector_class_by_name(name)
    except ValueError:
        raise AttributeError(f"kvledger.tap.vllm: vLLM registers no connector {name!r}") from None
    return tap_class(inner)
