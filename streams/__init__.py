"""The I/O shell of freshrec: Kafka consumers and producers, the worker, the CLI, config.

The only package that imports confluent_kafka or faust.
"""

import os

# Before anything imports numpy: its 2-thread OpenBLAS spikes the small matrix operations
# of a micro-batch on a 2-core machine (every entry point, the benchmarks included, runs
# what the worker runs).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
