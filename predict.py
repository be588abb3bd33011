"""Entry point placeholder: `python predict.py` is built in a later issue."""
import sys

if __name__ == "__main__":
    sys.exit("predict.py is not built yet")
