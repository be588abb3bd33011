"""Entry point placeholder: `python train.py` is built in a later issue."""
import sys

if __name__ == "__main__":
    sys.exit("train.py is not built yet")
