"""`reclaif bench NAME`: each benchmark runs the variants it compares side by side in one
process (or one process per variant, started from here) and prints ratios, never bare times.
Each module's `run(...)` takes its options as keyword arguments (reclaif.cli.bench passes the
flags); logprobs, sampling, train, e2e and peer."""
