"""``python -m debias3d <command> ...`` and ``accelerate launch -m debias3d <command> ...``: the typer app."""

from debias3d.cli import main

if __name__ == "__main__":
    main()
