"""`python -m dgad_tf.teachers` is `python -m dgad_tf.teachers.convert`."""

import sys

from dgad_tf.teachers.convert import main

sys.exit(main())
