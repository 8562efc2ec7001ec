"""Benchmarks of QGN Serve: memory and latency against scheme, image size and dense
baselines, measured side by side in one run (`python -m benchmarks.run`)."""
