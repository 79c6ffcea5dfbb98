"""Benchmarks of compactcnn: `python -m bench.<name>` writes bench/results/<name>.json.

`--quick` smoke runs write to bench/results/quick/ instead, beside the committed full results.

Importing this package imports compactcnn first, which selects Keras 2 (tf_keras) before TensorFlow
loads; every `bench.*` module runs this file before its own imports.
"""

import compactcnn  # noqa: F401
