"""The ``clip-hba`` command line: typer commands over the Python API.

- `clip_hba.cli.main`: the app, ``fit behavior``, ``embed``, ``evaluate behavior``,
  ``rsa compare``, ``demo`` and `main` (one error line and exit 2 for bad input).
- `clip_hba.cli.meg`: ``meg import|info|export|rsa``, ``simulate meg``.
- `clip_hba.cli.meg_fit`: ``fit meg``, ``fit individual``, ``evaluate meg``.
- `clip_hba.cli.options`: shared options, defaults from the config dataclasses, output.

Importing it first steers numpy's sorts to AVX2 on AMD Zen 4 (`clip_hba.cpu`).
"""

from clip_hba.cpu import use_avx2_sorts

use_avx2_sorts()  # before numpy is imported: on AMD Zen 4 its AVX-512 sorts are slow

from clip_hba.cli.main import app, main  # noqa: E402

__all__ = ["app", "main"]
