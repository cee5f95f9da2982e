import sys

from atom.cli import main

if __name__ == "__main__":  # datatrove's forkserver workers re-import the main module
    sys.exit(main())
