import sys

from swarmgrpo.cli import main

sys.exit(main())
