"""Every bound of the runtime in one place, units last (TigerStyle: a limit on everything).

Each limit carries its reason. ``WorkerConfig`` takes its defaults from here; the module-level
asserts at the bottom state how the limits relate, so a change that breaks a relation fails at
import, not in production.
"""

from __future__ import annotations

# -- time ------------------------------------------------------------------------------------
#: Pending obligations with no progress for this long: the worker says it cannot serve
#: (TensorRT-LLM's global progress deadline). The ledger's wedge detector uses the same value.
PROGRESS_DEADLINE_MS_DEFAULT = 30_000
#: A quarantined transfer (quiescence unknown: timed out or cancelled while in flight) has had its
#: user answered at once; once it has been stuck this long the worker turns unhealthy
#: (TensorRT-LLM #13831). Shorter than the progress deadline: one stuck entry is enough.
QUARANTINE_AGE_MS_DEFAULT = 10_000
#: A request waiting in an admission queue (for KV blocks or a staging slot) longer than this is
#: shed with a recorded reason instead of waiting without bound (serving engines queue with a
#: deadline and shed explicitly).
QUEUE_DEADLINE_MS_DEFAULT = 10_000
#: gen re-sends ``Abandon`` while it waits for ctx's final word on an advertised slot: a single
#: lost control message must not hold a receive slot forever. First retry after this long, then
#: doubling up to ``ABANDON_RETRY_MS_MAX``.
ABANDON_RETRY_MS_DEFAULT = 1_000
ABANDON_RETRY_MS_MAX = 30_000

# -- sizes -----------------------------------------------------------------------------------
#: Requests waiting for KV blocks per worker; an arrival beyond it is shed at once ("queue full").
ADMISSION_QUEUE_MAX_DEFAULT = 1_024
#: Recently finished request ids kept to answer ``already_complete``, drop duplicates and repeat
#: ctx's final word to a late ``Abandon`` or ``Advertise``.
FINISHED_MAX = 65_536
#: Records ctx keeps for requests gen spoke about before ctx had them (an ``Advertise`` or an
#: ``Abandon`` that overtook the arrival). Forged or stray ids must not pile up without a bound:
#: beyond it the oldest record is dropped (an advert answered ``not_ready`` first) and recorded.
EARLY_RECORDS_MAX = 4_096
#: ``protocol.violation`` events recorded per worker before further ones are only counted (a
#: misbehaving peer must not flood the ledger); the count is in ``state()``.
VIOLATIONS_RECORDED_MAX = 1_000
#: ``control.rejected`` events recorded per worker (forged or garbled frames); beyond it they are
#: only counted (``state()["rejected_frames"]``): a flood must not fill the ledger.
REJECTIONS_RECORDED_MAX = 1_000

# -- loops -----------------------------------------------------------------------------------
#: A bound on one step's effect cascade in the driver (a longer one would be a loop: a bug).
EFFECTS_PER_STEP_MAX = 100_000
#: A bound on joint-rule firings after one input (every firing moves a request forward).
JOINT_FIRINGS_MAX = 1_000_000

# -- control messages ------------------------------------------------------------------------
#: A request id on the wire: longer ones are refused by the decoder (the peer's fault).
REQUEST_ID_BYTES_MAX = 256
#: A control frame on the wire (a Completion carries one checksum per block).
CONTROL_FRAME_BYTES_MAX = 64 * 1024
#: A free-text field of a control message (an error or a reason).
CONTROL_TEXT_BYTES_MAX = 1_024

assert QUARANTINE_AGE_MS_DEFAULT < PROGRESS_DEADLINE_MS_DEFAULT
assert ABANDON_RETRY_MS_DEFAULT <= ABANDON_RETRY_MS_MAX <= PROGRESS_DEADLINE_MS_DEFAULT
assert ADMISSION_QUEUE_MAX_DEFAULT <= FINISHED_MAX
assert EARLY_RECORDS_MAX <= FINISHED_MAX
