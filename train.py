"""`python train.py --help` for the options; the code is in utils/train/cli.py."""
import sys

from utils.train.cli import apply_config_file, config_from_args, get_args_parser, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
