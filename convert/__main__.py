"""`python -m convert`: Hugging Face PLaMo 3 checkpoint -> MLX model directory."""

from convert.cli import convert_command

if __name__ == "__main__":
    convert_command()
