"""`python -m tuner` entry point."""

from tuner.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
