"""Face-verification core: everything the pages, the API, the batch runner and the tests call.

No Streamlit import anywhere in this package: pages stay thin and call in here.
"""

import sys

# TensorFlow's tf.lite tries `import jax` (to convert JAX functions, which the project never does)
# and mediapipe's requirements install jax: the import cost every process about 130 MB resident
# (1,354 -> 1,222 MB for a loaded engine) and 0.17 s. None in sys.modules makes it fail at once,
# as if jax were not installed; TensorFlow treats that as "no JAX support".
sys.modules.setdefault("jax", None)
