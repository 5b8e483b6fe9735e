"""kvledger.tap: a zero-patch vLLM KV-connector tap.

A deployment sets ``kv_connector_module_path="kvledger.tap.vllm"`` (keeping its ``kv_connector``)
and ``kv_connector_extra_config["kvledger"] = {"ledger": FOLDER_OR_URL}``; every scheduler-side and
worker-side connector call is then recorded into one kvledger stream per vLLM process, with the
facts the mapping derives (``tap/MAPPING.md``). ``tap.replay`` re-drives a real vLLM scheduler
from a recorded stream, deterministically; ``tap.harness`` drives real vLLM schedulers and
connectors on a CPU machine (tests, bench, replay). Importing ``kvledger.tap`` does not import vLLM;
``kvledger.tap.vllm``, ``.connector``, and ``.replay`` do.
"""

from .mapping import CALL_MAP, MAPPING_VERSION, Mapper, remap

#: The value of ``kv_connector_module_path`` that turns the tap on.
MODULE_PATH = "kvledger.tap.vllm"

__all__ = ["CALL_MAP", "MAPPING_VERSION", "MODULE_PATH", "Mapper", "remap"]
