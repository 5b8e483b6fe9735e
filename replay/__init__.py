"""kvledger.replay: re-run captured traces against the real runtime, deterministically.

trace.py (load, validate, extract inputs; write a trace), messages.py (control-message timing and
derived cancels), shim.py (ShimTransport and the virtual fabric), replayer.py (the VOPR-style
driver), verdict.py (detectors, wedge, divergence, digest), minimize.py (ddmin), live.py (the same
inputs against real worker processes), scenarios.py (one triggering run per mutant), cli.py.
"""
