"""`python -m bench` is the same as the `bench` console script."""

from bench.cli import run

if __name__ == "__main__":
    run()
