"""`python -m converter.cli` is the `trtforge` command."""

from converter.cli.main import main

main()
