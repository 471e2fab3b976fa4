"""`python -m benchmarks.accuracy`: see benchmarks/accuracy/run.py."""

from benchmarks.accuracy.run import main

main()
