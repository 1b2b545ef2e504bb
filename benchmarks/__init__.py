"""vidrec benchmark suite: see benchmarks/run.py."""
