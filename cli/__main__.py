"""`python -m cli ARGS` is `llama-aot ARGS`."""

import sys

from cli.main import main

sys.exit(main())
