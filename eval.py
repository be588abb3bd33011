"""Entry point placeholder: `python eval.py` is built in a later issue."""
import sys

if __name__ == "__main__":
    sys.exit("eval.py is not built yet")
