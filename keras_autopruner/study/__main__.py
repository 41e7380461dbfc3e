"""`python -m keras_autopruner.study`: see `keras_autopruner.study.cli`."""

import sys

from keras_autopruner.study.cli import main

sys.exit(main())
