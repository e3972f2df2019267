import sys

from stackforge.cli import main

sys.exit(main())
