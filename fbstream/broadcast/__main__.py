import sys

from fbstream.broadcast.cli import main

sys.exit(main())
