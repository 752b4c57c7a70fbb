"""Job steps on Celery workers (``jobs.executor = "celery"``): one machine is not enough.

``app`` builds the Celery application both sides share (queues, late acks); ``dispatcher``
runs in the node and publishes each due pipeline step once; ``task`` is what a worker runs
for a step message; ``worker`` is ``segnode worker``; ``shared_dir`` checks that a worker
sees the node's data folder. The job's state stays in the database
(``segnode.storage.step_claims``); a message only says which step of which job to run.
"""
