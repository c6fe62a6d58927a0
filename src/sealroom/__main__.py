"""Allow ``python -m sealroom``."""

import sys

from sealroom.cli.main import main

sys.exit(main())
