"""`python -m infinilm_torch`: runs the operator demo (the engine's generate job replaces it)."""
import sys


def main(argv=None) -> int:
    from infinilm_torch import demo_ops

    return demo_ops.main(argv)


if __name__ == "__main__":
    sys.exit(main())
