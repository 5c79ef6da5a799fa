"""Client-side traffic: the clinic simulator (``radflow simulate``) and the Locust load test (``radflow loadtest``).

Modules: :mod:`.arrivals` (Poisson timing), :mod:`.drift` (pixel shifts), :mod:`.traffic` (dataset
cases, encoding, feedback payloads), :mod:`.simulator` (the async client), :mod:`.judge` (ground-truth
check), :mod:`.loadtest` (headless Locust in a subprocess) and ``locustfile.py``.

This package file imports nothing on purpose: the Locust process imports :mod:`radflow.sim.judge`
(standard library only) and must not pull in NumPy, pandas or httpx under gevent's monkeypatching.
"""
