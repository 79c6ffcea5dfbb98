"""`python -m compactcnn.pretrained RUN NAME`."""

from compactcnn.pretrained import main

raise SystemExit(main())
