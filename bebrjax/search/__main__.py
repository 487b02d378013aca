"""`python -m bebrjax.search`: see `bebrjax.query`."""

import sys

from bebrjax.query import main

sys.exit(main())
