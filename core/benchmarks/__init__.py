"""Benchmarks and load tests: commands that print measured figures (never run by the product itself).

verification  accuracy and speed beside the bare pretrained pipeline (`python -m core.benchmark`)
baseline      the bare dlib-bin pipeline the benchmark compares with
search        1:N search latency over N enrolled members
imports       the member importer into a fresh database
load_test     the HTTP API under a fixed request rate

May import anything in core."""
