import sys

from atom.cli import main

sys.exit(main())
