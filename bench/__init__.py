"""Measurements of the project: ``make bench`` (speed) and ``make eval`` (memory quality).

``make bench`` puts the gateway side by side with the direct path and LiteLLM, one core each.
The load comes from the shared harness (``../shared/bench``: a fast mock upstream and
``bench.py`` driving wrk); run.py (the command) starts the targets (targets.py, with what
scenarios.py says), runs the harness against each, point by point (harness.py), and turns the
JSON lines into one table (report.py). processes.py keeps every child in its own process group
so that nothing outlives a run.
"""
