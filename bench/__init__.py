"""The benchmark: latency, throughput, backlog drain, gateway overhead and memory of the real
stack, each figure beside a baseline measured in the same run. Run `python -m bench` (or `bench/run.sh`)."""
