"""``python -m sections``: the ``sections`` command."""
from sections.cli.app import app

app()
