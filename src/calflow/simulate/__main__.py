"""``python -m calflow.simulate OUT_DIR [options]``: the same as ``calflow simulate OUT_DIR [options]``."""

from calflow.simulate.cli import main_simulate

if __name__ == "__main__":
    raise SystemExit(main_simulate())
