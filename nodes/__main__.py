import sys

from nodes.cli import main

sys.exit(main())
