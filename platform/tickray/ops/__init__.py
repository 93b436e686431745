"""Running tickray: the local stack, the Ray runtime every job connects through, cluster configs."""
