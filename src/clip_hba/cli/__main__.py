"""``python -m clip_hba.cli``."""

from clip_hba.cli.main import main

main()
