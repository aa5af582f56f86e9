"""`python -m waxflow` is the `waxflow` command."""

from waxflow.cli import main

main()
