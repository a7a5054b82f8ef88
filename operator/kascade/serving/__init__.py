"""kascade.serving."""
