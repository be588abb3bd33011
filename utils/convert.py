"""`python -m utils.convert`: the command; its code lives in utils/data/convert.py."""
import sys

from utils.data.convert import main

if __name__ == "__main__":
    sys.exit(main())
