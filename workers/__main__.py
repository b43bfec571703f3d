"""``python -m workers``: run one worker process (the same as ``stepline worker``)."""

from .service import main

if __name__ == "__main__":
    raise SystemExit(main())
