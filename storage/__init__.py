"""Everything the node keeps: the database (models, migrations, the SQL) and the file store.

One module per kind of row, so the SQL behind a question is found by its name:
``instances`` (+ ``instance_writer``, the group commit), ``associations``, ``quarantine`` and
``events`` are what the listener records; ``studies`` reads a receiving study and moves it out
of ``receiving``; ``job_states`` is the job state machine as a table and ``jobs`` makes its
moves; ``queries`` is what ``segnode studies`` and ``segnode jobs`` print; ``reconcile`` makes
files and rows agree at start-up; ``database`` opens engines and sessions and owns migrating.
"""
