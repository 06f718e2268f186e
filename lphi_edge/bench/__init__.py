"""lphi-bench: per-stage latency of every backend next to plain transformers, with the hardware floor."""
