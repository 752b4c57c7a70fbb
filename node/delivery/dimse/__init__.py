"""DICOM C-STORE SCU: presentation contexts, transport, statuses, the sending association."""
