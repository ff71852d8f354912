"""`python -m lg` is `lg`."""

from lg.cli.main import main

main()
