"""``python -m lnref``: the same as the ``lnref`` command."""

from lnref.cli import main

main()
