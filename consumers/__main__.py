"""`python -m consumers consume --feed NAME ...`: the same as `groundwatch consume ...`."""

import sys

from groundwatch.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
