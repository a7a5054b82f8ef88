"""kascade.api."""
