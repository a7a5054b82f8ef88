"""kascade.compile."""
