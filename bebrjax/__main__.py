"""`python -m bebrjax COMMAND ...`: the `bebrjax` command (see `bebrjax.commands`)."""

import sys

from bebrjax.commands import main

sys.exit(main())
