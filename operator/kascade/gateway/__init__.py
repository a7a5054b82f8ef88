"""kascade.gateway."""
