"""The ``clip-hba`` command line: typer commands over the Python API.

- `clip_hba.cli.main`: the app, ``fit behavior``, ``embed``, ``evaluate behavior``,
  ``rsa compare``, ``demo`` and `main` (one error line and exit 2 for bad input).
- `clip_hba.cli.meg`: ``meg import|info|export|rsa``, ``simulate meg``.
- `clip_hba.cli.meg_fit`: ``fit meg``, ``fit individual``, ``evaluate meg``.
- `clip_hba.cli.options`: shared options, defaults from the config dataclasses, output.
"""

from clip_hba.cli.main import app, main

__all__ = ["app", "main"]
