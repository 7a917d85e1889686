"""STOW-RS request bodies: multipart parsing to temporary files, the instances in them, the response.

Pure modules: no Starlette, no pynetdicom.
"""
