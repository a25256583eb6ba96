import sys

from doorkeep.cli import main

sys.exit(main())
