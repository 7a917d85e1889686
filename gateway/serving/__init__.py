"""How the gateway is served over HTTP: uvicorn's configuration and the bounds it lacks."""
