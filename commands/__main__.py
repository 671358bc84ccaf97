"""`python -m commands` = `mlx-plamo`."""

from commands.main import main

if __name__ == "__main__":
    main(prog_name="mlx-plamo")
