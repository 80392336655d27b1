"""python3 -m rawfetch.metalink make|check: see rawfetch/metalink/make.py."""
import sys

from .make import main

sys.exit(main())
