"""The `mlx-plamo` command group (`main`) and the commands that belong to no stage."""
