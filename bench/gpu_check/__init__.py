"""The GPU check's parts (``bench/gpu.py``): :mod:`.context` — the device, the config and its store, the
device's memory — and its six benchmarks, one module each, each a function of the context that prints
its section's line and returns the numbers the section records: (a) :mod:`.gpu_tests`, (b) :mod:`.fleet`,
(c) :mod:`.cells`, (d) :mod:`.analogy`, (e) :mod:`.headline`, (f) :mod:`.projection`."""
