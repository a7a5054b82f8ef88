"""kascade.local."""
