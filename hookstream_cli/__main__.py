"""``python -m hookstream_cli``: the same as the ``hookstream`` console script."""

from hookstream_cli.main import main

main()
