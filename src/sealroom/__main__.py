"""Allow ``python -m sealroom``."""

import sys

from sealroom.cli import main

sys.exit(main())
