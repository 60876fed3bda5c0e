"""`python -m workers` is the `ops-workers` command."""

from workers.cli import main

main()
