"""`python -m utils.benchmark --weights best.pth --data D [--split test] [--formats all]`: every export format
exported, loaded back, scored by eval.py's code and timed (utils/deploy/benchmark.py)."""
import sys

from utils.deploy.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
