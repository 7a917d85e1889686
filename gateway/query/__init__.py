"""QIDO-RS query handling that needs neither Starlette nor pynetdicom: parse, translate, match, encode."""
