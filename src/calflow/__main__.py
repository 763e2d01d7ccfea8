import sys

from calflow.cli import main

sys.exit(main())
