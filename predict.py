"""`python predict.py --help` for the options; the code is in utils/deploy/cli.py."""
import sys

from utils.deploy.cli import SourceError, class_filter, get_args_parser, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
