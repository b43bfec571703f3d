"""``python -m gateway``: the same as ``stepline gateway``."""

from .cli import main

raise SystemExit(main())
