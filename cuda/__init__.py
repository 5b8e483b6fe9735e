"""kvledger.cuda: the device data path; torch fallback on CPU.

- ``ops``: pack (blocks -> slot), unpack (slot -> blocks), per-block checksums; dispatches to the
  Triton kernels of ``kernels`` for CUDA tensors, else the torch reference (bit-identical).
- ``kernels``: the Triton kernels (imported only when a CUDA tensor is seen).
- ``quiescence``: ``DeviceFence`` (a CUDA event behind a pack/unpack) and ``Quiescence`` (a slot or
  block set is reusable only when its fences completed AND the transport reported DONE/ERR).
"""
