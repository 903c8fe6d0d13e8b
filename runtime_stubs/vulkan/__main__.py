"""python -m runtime_stubs.vulkan: build the Vulkan runtime plugin and list the devices."""

import sys

from . import main

sys.exit(main())
