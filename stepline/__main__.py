"""``python -m stepline``: the ``stepline`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
