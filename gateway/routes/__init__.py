"""HTTP routes: thin handlers that parse, call and render."""
