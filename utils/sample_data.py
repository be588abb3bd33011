"""`python -m utils.sample_data`: the command; its code lives in utils/data/sample_data.py."""
import sys

from utils.data.sample_data import main

if __name__ == "__main__":
    sys.exit(main())
