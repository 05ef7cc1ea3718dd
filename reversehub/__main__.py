"""``python -m reversehub``: the same command line as the ``reversehub`` script."""

from reversehub.server.cli import main

main(prog_name="reversehub")
