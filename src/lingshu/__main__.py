"""``python -m lingshu`` runs the command-line interface (same as the ``lingshu`` script)."""

from lingshu.cli import main

if __name__ == "__main__":
    main()
