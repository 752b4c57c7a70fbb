"""Sub-commands of the segnode CLI that live in their own modules (wired in node/cli.py)."""
