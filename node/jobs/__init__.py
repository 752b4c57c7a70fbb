"""Jobs: the runner that drives the job state machine, the worker pool that runs steps, the retry backoff."""
