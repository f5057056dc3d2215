"""`python -m ops ...` is `tokex ...`."""

import sys

from ops.cli import main

sys.exit(main())
