"""``python -m segnode.node.cli``: the same command line as the ``segnode`` script."""

from segnode.node.cli import app

app()
