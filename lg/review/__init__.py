"""`lg review`: the interactive terminal reviewer of pending gates (Textual)."""
