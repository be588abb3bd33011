"""`python eval.py --help` for the options; the code is in utils/eval/cli.py."""
import sys

from utils.eval.cli import get_args_parser, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
