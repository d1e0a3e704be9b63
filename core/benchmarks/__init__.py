"""Benchmarks and load tests: commands that print measured figures (never run by the product itself).

verification  accuracy and speed beside the bare pretrained pipeline (`faceverify bench verification`)
baseline      the bare dlib-bin pipeline the benchmark compares with
search        1:N search latency over N enrolled members
imports       the member importer into a fresh database
load_test     the HTTP API under a fixed request rate
load_combined two API workers, a queue worker and a dashboard batch at once on MariaDB + SeaweedFS +
              a broker, the object store and the queue worker killed mid-run
seaweedfs     a local SeaweedFS (S3) server the tests and the combined load test start
scale_out     one API worker against two, each held to one core
capture       the capture check on synthetic variants (capture_variants draws them)
fraud         reused-photo, pose-challenge and turned-face figures
dlib_port     the Keras port of dlib's ResNet beside dlib: load time, per-face timings

May import anything in core."""
