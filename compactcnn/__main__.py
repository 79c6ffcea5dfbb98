"""`python -m compactcnn` is the `compactcnn` command."""

import sys

from compactcnn.cli import main

sys.exit(main())
