"""WADO-RS from Part 10 files (PS3.18 §10.4): metadata, bulk data, frames, rendered images.

Pure functions over a file on disk; the routes decide where the file comes from. Reading is
bounded: headers are read without their large values, and pixel data one frame at a time.
"""
