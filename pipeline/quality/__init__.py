"""Quality flags: what a reader must know before trusting a result.

The contract (``record.py``) is light (pydantic only) so that the outputs, the job runner
and the CLI read it without numpy; ``assess.py`` computes it from the job folder's records.
"""
