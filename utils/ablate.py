"""`python -m utils.ablate`: the command; its code lives in utils/study/ablate.py."""
import sys

from utils.study.ablate import main

if __name__ == "__main__":
    sys.exit(main())
