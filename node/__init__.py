"""DICOM networking and the service: listener, completion, routing, jobs, CLI."""
