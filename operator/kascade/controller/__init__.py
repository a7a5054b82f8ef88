"""kascade.controller."""
